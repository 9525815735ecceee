"""``vdm-fast demo``: train a VDM on 8x8 digits or your own images, evaluate bits/dim, sample.

The digits by default; ``--data DIR`` trains on a folder of images instead (vdm_fast/demo/data.py).

What it shows, end to end, on two CPU cores:

1. Training with the fused ops: ``vdm_fast.elbo.elbo`` (q_sample, sq_error, prior_kl, recon_nll)
   under a learned linear noise schedule (``LearnedLinearGamma``, endpoints learned with the
   model) and the continuous-time ELBO, in bits/dim, as the loss. Labels are dropped to the null
   class 10 % of the time, so the same network is also the unconditional model.
2. Held-out bits/dim, per term (recon, prior, diffusion) and total, each with its Monte Carlo
   standard error, next to a per-pixel categorical baseline; evaluated at regular intervals for the
   trained weights and their exponential moving average (``torch.optim.swa_utils.AveragedModel``).
   The EMA weights of the best evaluation are kept (``best.pt``) and are what the headline, the
   samples and the classifier score use.
3. Classifier-free guided ancestral sampling, one row per class, written as a PNG, and a
   classifier (trained in the same run on the training split) scoring the samples.
4. Atomic, checksummed checkpoints every ``--ckpt-every`` steps; rerunning the command resumes.
5. Multi-process: under ``torchrun --nproc_per_node=N`` each process trains on its slice of the
   same global batch (DistributedDataParallel; gloo on CPU, nccl on GPU) and the held-out ELBO
   is all-reduced.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .. import elbo as elbo_mod
from .. import guidance, parameterization, samplers
from ..schedules import LearnedLinearGamma
from . import checkpoint, data
from .baseline import PerPixelCategorical
from .classifier import ImageClassifier
from .model import Denoiser
from .options import add_demo_arguments, check_after_parsing

LABEL_DROPOUT = 0.1
HEAD_RANK = 16
# What a demo checkpoint holds (checkpoint.load refuses a file without one of them).
CHECKPOINT_KEYS = ("step", "model", "ema", "optimizer", "lr_schedule", "history", "best")


# --- the trained object: network + learned schedule --------------------------------------------


class VDM(nn.Module):
    """The denoiser and its learned schedule, trained together (one module for DDP)."""

    def __init__(self, hidden: int = 256, depth: int = 3, image_shape: tuple[int, int, int] = (1, 8, 8),
                 num_classes: int = data.NUM_CLASSES, dropout: float = 0.0, head_rank: int | None = HEAD_RANK):
        super().__init__()
        self.image_shape = tuple(image_shape)
        # Regularisation, sized for ~1400 training digits (issue 19: without it the held-out ELBO
        # rose from step 1000 on while the training ELBO kept falling, from 1.9 to 0.96 bits/dim):
        # - the posterior head is low rank (HEAD_RANK logits per pixel, mapped to the 256 values by
        #   a learned basis): the full-rank head was 4.2M of the network's 4.4M weights, enough to
        #   memorise the training set; the rank-16 one has 262K (and the step is ~3x faster);
        # - decoupled weight decay on the weight matrices (``optimizer``);
        # - dropout in the residual branches, as DDPM (0.1 on CIFAR-10) and improved-diffusion use it.
        # No augmentation: shifts or flips change the distribution whose likelihood is measured.
        # The EMA of the weights and keeping the best held-out evaluation come on top.
        self.net = Denoiser(dim=math.prod(image_shape), num_classes=num_classes, hidden=hidden, depth=depth,
                            dropout=dropout, head_rank=head_rank)
        # gamma(0) = -13.5: sigma_0 ~ 1e-3, a sixth of an 8-bit bin, so the categorical decoder
        # costs ~0 bits; gamma(1) = 7: the prior term is ~5e-4 bits/dim. Both endpoints are learned.
        self.schedule = LearnedLinearGamma(gamma_min=-13.5, gamma_max=7.0)

    def eps_model(self, labels: torch.Tensor):
        """``model(z_t, t)`` for vdm_fast.elbo: the network sees log-SNR(t) and the labels."""
        return lambda z, t: self.net(z, -self.schedule.gamma(t), labels)

    def forward(self, x, labels, t, noise, recon_noise) -> torch.Tensor:
        """Per-sample ELBO in bits/dim for fixed draws (t, noise, recon_noise)."""
        terms = elbo_mod.elbo(self.eps_model(labels), x, self.schedule, t=t, noise=noise, recon_noise=recon_noise)
        return terms.bpd


def optimizer(vdm: VDM, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on the network's weight matrices (linear layers, label
    embedding, the head's value basis) and none on biases, LayerNorm gains, the per-pixel value
    prior (data statistics, not capacity: decay would pull it towards uniform) or the schedule's
    endpoints. The basis is decayed with the head's projection: decaying only one factor of a
    product lets the other grow and leaves the product unregularised."""
    decay, keep = [], []
    for name, p in vdm.named_parameters():
        exempt = p.ndim < 2 or name.startswith("schedule.") or name == "net.value_prior"
        (keep if exempt else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": keep, "weight_decay": 0.0}], lr=lr)


@dataclass
class Batch:
    """One global batch, drawn identically on every process from (seed, step)."""

    index: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    recon_noise: torch.Tensor
    drop: torch.Tensor

    def shard(self, rank: int, world: int) -> "Batch":
        n = self.index.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        return Batch(self.index[sl], self.t[sl], self.noise[sl], self.recon_noise[sl], self.drop[sl])


def draw_batch(n_train: int, global_batch: int, seed: int, step: int,
               image_shape: tuple[int, int, int] = (1, data.SIDE, data.SIDE)) -> Batch:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    index = torch.randint(0, n_train, (global_batch,), generator=gen)
    t = elbo_mod.sample_time(global_batch, antithetic=True, generator=gen)
    shape = (global_batch, *image_shape)
    noise = torch.randn(shape, generator=gen)
    recon_noise = torch.randn(shape, generator=gen)
    drop = torch.rand(global_batch, generator=gen) < LABEL_DROPOUT
    return Batch(index, t, noise, recon_noise, drop)


def train_loss(model: nn.Module, train: data.Split, batch: Batch, device) -> torch.Tensor:
    """Mean bits/dim over the (local) batch: DDP's gradient average then equals the global mean."""
    x = train.images[batch.index].to(device)
    null = (model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model).net.null_class
    labels = torch.where(batch.drop, torch.full_like(batch.index, null), train.labels[batch.index])
    return model(x, labels.to(device), batch.t.to(device), batch.noise.to(device), batch.recon_noise.to(device)).mean()


# --- evaluation -------------------------------------------------------------------------------


TERMS = ("recon_bpd", "prior_bpd", "diffusion_bpd", "total_bpd")


@torch.no_grad()
def evaluate(vdm: VDM, split: data.Split, device, repeats: int, seed: int, rank: int = 0, world: int = 1) -> dict:
    """Held-out per-term bits/dim of the conditional model, averaged over ``repeats`` draws of
    (t, eps) per image, each with its Monte Carlo standard error (``<term>_se``).

    The error is that of the estimate for this held-out set: the draws of (t, eps) are what a
    second evaluation of the same model would change. Per image i with estimates v_i1..v_iR, the
    variance of the image's mean is s_i^2 / R (s_i^2 the sample variance of its R draws; draws of one
    image are independent, images of one draw share the antithetic t), and the set's mean of N
    images has SE = sqrt(sum_i s_i^2 / R) / N. NaN with one draw per image. Each process takes a
    slice of the held-out set; the sums are all-reduced."""
    was_training = vdm.training
    vdm.eval()  # no dropout in the evaluation
    try:
        return _evaluate(vdm, split, device, repeats, seed, rank, world)
    finally:
        vdm.train(was_training)


def _evaluate(vdm: VDM, split: data.Split, device, repeats: int, seed: int, rank: int, world: int) -> dict:
    gen = torch.Generator().manual_seed(seed + 12345)
    n = split.images.shape[0]
    mine = torch.arange(rank, n, world)
    x = split.images[mine].to(device)
    labels = split.labels[mine].to(device)
    draws = []  # (4 terms, local images) per repeat
    for _ in range(repeats):
        t = elbo_mod.sample_time(n, antithetic=True, generator=gen)[mine].to(device)
        noise = torch.randn((n,) + tuple(x.shape[1:]), generator=gen)[mine].to(device)
        rnoise = torch.randn((n,) + tuple(x.shape[1:]), generator=gen)[mine].to(device)
        terms = elbo_mod.elbo(vdm.eps_model(labels), x, vdm.schedule, t=t, noise=noise, recon_noise=rnoise).bpd_terms()
        draws.append(torch.stack([terms.recon, terms.prior, terms.diffusion, terms.total]).double().cpu())
    per = torch.stack(draws)  # (repeats, 4, local images)
    var = per.var(dim=0, unbiased=True) if repeats > 1 else torch.full(per.shape[1:], math.nan, dtype=torch.float64)
    sums = torch.stack([per.mean(dim=0).sum(dim=1), (var / repeats).sum(dim=1)])  # (2, 4)
    if world > 1:
        dist.all_reduce(sums)
    mean, se = sums[0] / n, sums[1].sqrt() / n
    out = {}
    for i, name in enumerate(TERMS):
        out[name] = mean[i].item()
        out[name + "_se"] = se[i].item()
    return out


@torch.no_grad()
def sample(vdm: VDM, per_class: int, steps: int, guidance_scale: float, seed: int, device) -> torch.Tensor:
    """8-bit samples by ancestral sampling: ``per_class`` for each class, class-major, with
    classifier-free guidance; ``per_class`` unconditional ones when the model has no classes."""
    vdm.eval()  # no dropout while sampling
    classes = null = vdm.net.null_class  # labels 0..classes-1; the null label is the next one
    labels = torch.arange(max(classes, 1)).repeat_interleave(per_class).to(device)
    gen = torch.Generator(device=device).manual_seed(seed + 777)
    z = torch.randn((labels.shape[0], *vdm.image_shape), generator=gen, device=device)
    net = lambda zz, tt, yy: vdm.net(zz, -vdm.schedule.gamma(tt), yy)  # noqa: E731
    times = samplers.uniform_times(steps).to(device)
    if classes:
        model, scale = guidance.classifier_free(net, labels, null), guidance_scale
    else:
        model, scale = (lambda zz, tt: net(zz, tt, torch.full_like(labels, null))), None
    z0 = samplers.sample_ancestral(model, z, vdm.schedule, times, guidance_scale=scale, clip=1.0, generator=gen)
    # Decode: the most likely 8-bit value given z_0 is the bin centre nearest z_0 / alpha_0.
    alpha0 = parameterization.alpha_sigma(vdm.schedule.gamma(torch.zeros(1, device=device)))[0]
    return data.from_model_space((z0 / alpha0).cpu())


# --- the command --------------------------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def ema_decay(steps: int) -> float:
    """The EMA's decay for a run of ``steps``: it averages over about the last tenth of the run
    (1 / (1 - decay) = steps / 10 steps), at least 10 and at most 1000 steps. A fixed 0.999 would
    average over 1000 steps, most of a 1200-step quick run, reaching back to weights far from
    trained; a tenth of the run smooths the step-to-step noise of the weights and follows the
    learning-rate decay."""
    return 1.0 - 1.0 / min(max(steps / 10, 10.0), 1000.0)


def _fmt(metrics: dict, key: str, digits: int = 3) -> str:
    return f"{metrics[key]:.{digits}f} ± {metrics[key + '_se']:.{digits}f}"


def run(args) -> dict:
    steps = args.steps or (1200 if args.quick else 6000)
    eval_every = args.eval_every or max(steps // 12, 1)
    repeats = args.eval_repeats or (4 if args.quick else 16)
    sample_steps = args.sample_steps or (100 if args.quick else 250)
    rank, world = _distributed()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the number of processes ({world})")
    log = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(args.seed)
    dataset = data.load_folder(args.data, args.size, seed=args.seed) if args.data else data.load(seed=args.seed)
    train, held_out = dataset.train, dataset.held_out
    baseline_bpd = PerPixelCategorical(train.pixels).bits_per_dim(held_out.pixels)
    vdm = VDM(image_shape=dataset.image_shape, num_classes=dataset.num_classes, dropout=args.dropout).to(device)
    # The weights the run evaluates, samples and keeps: an exponential moving average of the
    # trained ones (PyTorch's own AveragedModel; buffers averaged too).
    ema = AveragedModel(vdm, multi_avg_fn=get_ema_multi_avg_fn(ema_decay(steps)), use_buffers=True)
    opt = optimizer(vdm, args.lr, args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")  # the latest state: what a rerun resumes from
    best_path = os.path.join(args.out, "best.pt")  # the EMA weights of the best held-out evaluation
    start, history, resumed_from, best = 0, [], None, None
    if rank == 0:
        stale = checkpoint.remove_stale_temporaries(args.out)
        if stale:
            log(f"removed {stale} temporary file(s) of an interrupted checkpoint save from {args.out}")
    state = None if args.fresh else checkpoint.load(ckpt_path, keys=CHECKPOINT_KEYS)
    if state is not None:
        try:
            vdm.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["lr_schedule"])
            history, best = json.loads(state["history"]), json.loads(state["best"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # another model's weights, say
            raise checkpoint.CheckpointError(f"checkpoint {ckpt_path} does not fit this model "
                                             f"({str(exc).splitlines()[0][:200]}); pass --fresh to start over") from None
        start = resumed_from = state["step"]
        # best.pt can be newer than the latest checkpoint (a run stopped between the two saves):
        # the file is what the headline uses, so its record is the one to beat.
        kept = checkpoint.load(best_path, keys=("step", "model", "held_out"))
        if kept is not None and (best is None or json.loads(kept["held_out"])["total_bpd"] < best["total_bpd"]):
            best = {"step": kept["step"], **json.loads(kept["held_out"])}
        log(f"resumed from {ckpt_path} at step {start}")
    ddp = nn.parallel.DistributedDataParallel(vdm) if world > 1 else vdm

    if dataset.skipped:
        log(f"skipped {len(dataset.skipped)} file(s) that could not be decoded as images, e.g. {dataset.skipped[0]}")
    log(f"vdm-fast demo: {dataset.description}: {len(train.labels)} training / {len(held_out.labels)} held-out, "
        f"{world} process(es), "
        f"{steps} steps of batch {args.batch_size} on {device}; per-pixel baseline {baseline_bpd:.3f} bits/dim")
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="training", unit="step")
    t0 = time.time()
    for step in range(start, steps):
        batch = draw_batch(len(train.labels), args.batch_size, args.seed, step, dataset.image_shape).shard(rank, world)
        loss = train_loss(ddp, train, batch, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vdm.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(vdm)
        if step % 25 == 0:
            history.append({"step": step, "train_bpd": loss.item()})
        done = step + 1
        if done % eval_every == 0 or done == steps:
            raw = evaluate(vdm, held_out, device, repeats, args.seed, rank, world)
            avg = evaluate(ema.module, held_out, device, repeats, args.seed, rank, world)
            history.append({"step": done, "eval_bpd": raw["total_bpd"], "eval_se": raw["total_bpd_se"],
                            "ema_eval_bpd": avg["total_bpd"], "ema_eval_se": avg["total_bpd_se"]})
            improved = best is None or avg["total_bpd"] < best["total_bpd"]
            if improved:
                best = {"step": done, **avg}
                if rank == 0:  # the selected weights, next to the latest state
                    checkpoint.save({"step": done, "model": ema.module.state_dict(), "held_out": json.dumps(avg)},
                                    best_path)
            log(f"\nstep {done}: held-out {_fmt(avg, 'total_bpd')} bits/dim with the EMA weights "
                f"({_fmt(raw, 'total_bpd')} without){' (best so far)' if improved else ''}; "
                f"gamma(0)={vdm.schedule.gamma_min.item():.2f} gamma(1)={vdm.schedule.gamma_max.item():.2f}")
        if rank == 0 and (done % args.ckpt_every == 0 or done == steps):
            checkpoint.save({"step": done, "model": vdm.state_dict(), "ema": ema.state_dict(),
                             "optimizer": opt.state_dict(), "lr_schedule": sched.state_dict(),
                             "history": json.dumps(history), "best": json.dumps(best)}, ckpt_path)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bpd=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    train_seconds = time.time() - t0

    # The headline: the best evaluation's weights (best.pt, which every process reads once rank 0
    # has written it), evaluated again on fresh (t, eps) draws, since the minimum over several
    # noisy evaluations is biased low by about their standard error.
    if world > 1:
        dist.barrier()
    kept = checkpoint.load(best_path, keys=("step", "model", "held_out"))
    if kept is None:
        raise checkpoint.CheckpointError(f"{best_path} is missing (deleted?); pass --fresh to train again")
    chosen = VDM(image_shape=dataset.image_shape, num_classes=dataset.num_classes).to(device)
    chosen.load_state_dict(kept["model"])
    best = {"step": kept["step"], **json.loads(kept["held_out"])}
    final = evaluate(chosen, held_out, device, repeats, args.seed + 1, rank, world)
    summary = {"steps": steps, "resumed_from": resumed_from, "processes": world, "train_seconds": round(train_seconds, 1),
               "ema_decay": ema_decay(steps), "eval_repeats": repeats, "best_step": best["step"],
               "best_selection_bpd": best["total_bpd"], "held_out": final, "baseline_bpd": baseline_bpd,
               "gamma_0": chosen.schedule.gamma_min.item(), "gamma_1": chosen.schedule.gamma_max.item()}
    if rank == 0:
        from . import plots

        pixels = sample(chosen, args.samples_per_class, sample_steps, args.guidance_scale, args.seed, device)
        summary.update({"data": dataset.description, "classes": dataset.classes, "skipped_files": len(dataset.skipped),
                        "sample_steps": sample_steps})
        rows = max(dataset.num_classes, 1)
        if dataset.num_classes >= 2:
            # Evidence that guidance works: a classifier trained on the training split labels the samples.
            wanted = torch.arange(dataset.num_classes).repeat_interleave(args.samples_per_class)
            clf = ImageClassifier(train.pixels, train.labels, digits=not args.data)
            summary.update({
                "guidance_scale": args.guidance_scale,
                "samples_scored": int(wanted.numel()),
                "classifier_accuracy_on_samples": clf.accuracy(pixels, wanted),
                "classifier_accuracy_on_held_out": clf.accuracy(held_out.pixels, held_out.labels),
            })
            agree = round(summary["classifier_accuracy_on_samples"] * wanted.numel())
            title = (f"CFG samples (w={args.guidance_scale}), one row per class; "
                     f"classifier agrees on {agree} of {wanted.numel()}")
        else:
            title = "unconditional samples"
        plots.sample_grid(pixels, rows, os.path.join(args.out, "samples.png"), title, dataset.classes or None,
                          grey_cmap="gray" if args.data else "gray_r")
        plots.training_curve(history, baseline_bpd, os.path.join(args.out, "training_curve.png"), best["step"])
        with open(os.path.join(args.out, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        verdict = "below" if final["total_bpd"] < baseline_bpd else "NOT below"
        log(f"\nbest held-out evaluation at step {best['step']} of {steps} (EMA weights, decay {ema_decay(steps):.4f}); "
            f"evaluated again on fresh draws ({repeats} per image, ± one standard error):")
        log(f"  total     {_fmt(final, 'total_bpd')} bits/dim, {verdict} the per-pixel baseline {baseline_bpd:.3f}")
        for term in ("recon", "prior", "diffusion"):
            log(f"  {term:<9} {_fmt(final, term + '_bpd', 4)}")
        if "samples_scored" in summary:
            log(f"guided samples: the classifier agrees with the requested class on {agree} of {wanted.numel()} "
                f"({100 * summary['classifier_accuracy_on_samples']:.1f}%; it scores "
                f"{100 * summary['classifier_accuracy_on_held_out']:.1f}% on {len(held_out.labels)} real held-out "
                "images)")
        log(f"wrote {args.out}/samples.png, training_curve.png, summary.json, best.pt, checkpoint.pt")
    if world > 1:
        dist.barrier()
    return summary


def shutdown() -> None:
    """Tear the process group down while the interpreter is fully alive.

    ``destroy_process_group`` only unregisters the group: a DistributedDataParallel model that is no
    longer used still holds it from a reference cycle, so without the collection below the group's
    Gloo worker threads are joined only by the garbage collection inside interpreter finalization.
    A worker thread that then drops the last reference to a tensor needs the GIL, Python ends that
    thread with a forced unwind, and the process aborts ("terminate called without an active
    exception"; seen with torch 2.14.1 on one run in ten of tests/test_demo.py's two-process test)."""
    if dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    """``python -m vdm_fast.demo.train`` (what torchrun launches): the same as ``vdm-fast demo``."""
    parser = argparse.ArgumentParser(prog="vdm-fast demo", description=__doc__.splitlines()[0])
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    check_after_parsing(parser, args)
    run(args)
    shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
