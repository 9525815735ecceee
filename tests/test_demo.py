"""The demo's machinery: safe checkpoints, multi-process training equal to one process, and a
tiny end-to-end run that resumes after an interruption."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vdm_fast.demo import checkpoint, train

# --- checkpoints (issue 7: weights_only, truncated/corrupted files, the previous good one kept) ---


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "history": "[]"}


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(_state(7), str(path))
    torch.load(path, weights_only=True)  # loads with no pickled code
    state = checkpoint.load(str(path))
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.full((3,), 7.0))


def test_missing_checkpoint_is_none(tmp_path):
    assert checkpoint.load(str(tmp_path / "nothing.pt")) is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_ours"])
def test_damaged_checkpoint_gives_a_clear_error(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(_state(3), str(path))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(reversed(raw)))
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="ckpt.pt"):
        checkpoint.load(str(path))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(_state(1), str(path))

    def dies_half_way(obj, fh, *args, **kwargs):
        fh.write(b"partial bytes of a checkpoint that never finished")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(_state(2), str(path))
    monkeypatch.undo()
    assert checkpoint.load(str(path))["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no temporary file left behind


def test_checkpoint_refuses_pickled_code_without_echoing_torchs_advice(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"step": 1, "fn": _state}, path)  # a function is not loadable with weights_only
    with pytest.raises(checkpoint.CheckpointError, match="can run code") as err:
        checkpoint.load(str(path))
    assert "weights_only" not in str(err.value)


def test_flipped_bytes_inside_the_weights_are_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    weights = torch.arange(64, dtype=torch.float32) + 0.25  # a byte pattern to find in the file
    checkpoint.save({"step": 4, "model": {"w": weights}, "history": "[]"}, str(path))
    raw = bytearray(path.read_bytes())
    at = raw.find(weights.numpy().tobytes())
    assert at > 0  # the tensor's bytes are stored as they are (torch.save's zip, uncompressed)
    raw[at + 10] ^= 0x01
    raw[at + 100] ^= 0x80
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["step"] == 4  # torch itself reads it without complaint
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        checkpoint.load(str(path))


@pytest.mark.parametrize("bad", ["missing_model", "no_checksum", "negative_step", "float_step"])
def test_checkpoint_with_missing_keys_or_a_bad_step_is_refused(tmp_path, bad):
    path = tmp_path / "ckpt.pt"
    state = {"step": 5, "model": {"w": torch.ones(2)}, "history": "[]"}
    if bad == "missing_model":
        del state["model"]
    elif bad == "negative_step":
        state["step"] = -3
    elif bad == "float_step":
        state["step"] = 2.5
    if bad == "no_checksum":
        torch.save(state, path)  # written without checkpoint.save
    else:
        checkpoint.save(state, str(path))
    match = {"missing_model": r"missing \['model'\]", "no_checksum": r"missing \['checksum'\]",
             "negative_step": "step -3", "float_step": "step 2.5"}[bad]
    with pytest.raises(checkpoint.CheckpointError, match=match):
        checkpoint.load(str(path), keys=("step", "model"))


def test_temporaries_of_a_killed_save_are_removed_by_the_next_run(tmp_path):
    import signal
    import subprocess
    import sys

    # A save killed mid-write (SIGKILL: no cleanup runs) leaves its temporary file behind.
    code = ("import os, signal, torch; from vdm_fast.demo import checkpoint\n"
            "def dies(obj, fh, *a, **k):\n    fh.write(b'x' * 4096); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "torch.save = dies\n"
            f"checkpoint.save({{'step': 1}}, {str(tmp_path / 'checkpoint.pt')!r})\n")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
        assert proc.returncode == -signal.SIGKILL
    left = [f for f in os.listdir(tmp_path) if f.startswith(checkpoint.TEMP_PREFIX)]
    assert len(left) == 2
    assert checkpoint.remove_stale_temporaries(str(tmp_path)) == 2
    assert os.listdir(tmp_path) == []


# --- flags: checked before any work (issue 19) ----------------------------------------------------


BAD_FLAGS = [("--steps", "-5"), ("--steps", "0"), ("--eval-repeats", "-1"), ("--eval-repeats", "1"), ("--batch-size", "0"),
             ("--batch-size", "-4"), ("--lr", "nan"), ("--lr", "0"), ("--ckpt-every", "0"),
             ("--samples-per-class", "0"), ("--sample-steps", "-1"), ("--device", "bogus"),
             ("--seed", str(2**70)), ("--seed", "-1"), ("--guidance-scale", "inf"), ("--eval-every", "x"),
             ("--size", "0"), ("--weight-decay", "-0.1"), ("--weight-decay", "nan")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS, ids=[f"{f}={v}" for f, v in BAD_FLAGS])
def test_bad_flag_exits_2_naming_it_before_any_work(tmp_path, capsys, flag, value):
    from vdm_fast import cli

    out = tmp_path / "demo"
    out.mkdir()
    good = out / "checkpoint.pt"
    checkpoint.save(_state(250), str(good))
    before = good.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--out", str(out), "--no-progress", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err
    assert good.read_bytes() == before and sorted(os.listdir(out)) == ["checkpoint.pt"]  # nothing written


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_unusable_output_folder_exits_2_before_any_work(tmp_path, capsys, where):
    from vdm_fast import cli

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    out = a_file if where == "a_file" else a_file / "demo"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--out", str(out), "--no-progress", "--steps", "1"])
    assert exit_.value.code == 2
    assert "argument --out:" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, capsys):
    from vdm_fast import cli

    out = tmp_path / "demo"
    checkpoint.save({"step": 3, "model": {"w": torch.ones(2)}, "ema": {}, "optimizer": {}, "lr_schedule": {},
                     "history": "[]", "best": "null"}, str(out / "checkpoint.pt"))
    assert cli.main(["demo", "--out", str(out), "--no-progress", "--steps", "4"]) == 1
    assert "does not fit this model" in capsys.readouterr().err


# --- multi-process: 2 processes == 1 process on the same global batch ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grads(world: int, rank: int, steps: int = 2):
    """Train ``steps`` steps of the demo's model on the same global batches; return the local losses
    of the last step and the (DDP-averaged) gradients."""
    from torch import nn

    from vdm_fast.demo import data

    torch.manual_seed(0)
    split = data.load(seed=0).train
    vdm = train.VDM(hidden=64, depth=1)
    model = nn.parallel.DistributedDataParallel(vdm) if world > 1 else vdm
    opt = torch.optim.SGD(vdm.parameters(), lr=1e-2)
    for step in range(steps):
        batch = train.draw_batch(len(split.labels), 8, seed=0, step=step).shard(rank, world)
        loss = train.train_loss(model, split, batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in vdm.named_parameters()}
        opt.step()
    return loss.detach(), grads


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        loss, grads = _loss_and_grads(world, rank)
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss)
        if rank == 0:
            torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, out)
    finally:
        train.shutdown()  # the demo's teardown, which a two-process run needs (see its docstring)


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    loss, grads = _loss_and_grads(world=1, rank=0)
    # The mean of the two local means is the global mean (equal shards); DDP averages gradients.
    # Same data, same seeds (every random input is drawn from a seeded generator), so the runs
    # differ only by float32 rounding: the batch of 8 is reduced in another order (two shards of 4,
    # then an all-gather or a gloo all-reduce; the 1/4 and 1/2 scalings are exact), and kernels may
    # block a batch of 4 differently from one of 8, so per-sample values can differ by a few
    # roundings through the network and, via the first SGD step, the parameters of the second.
    # The loss is a mean of positive per-sample bits/dim: reordering it costs at most
    # 2 gamma_8 = 16 u = 1e-6 relative (u = 2^-24); rtol 1e-5 leaves room for the per-sample
    # differences. A gradient entry sums per-sample terms g_i of both signs, so its reordering error
    # is bounded by 2 gamma_8 sum_i |g_i| / 8, not by its own size: sum_i |g_i| / 8 is at most ~1.1
    # for these parameters (the schedule's), which makes 1e-6, the atol; rtol 1e-4 covers the
    # per-sample differences where the entries do not cancel. (Deriving the bound with
    # tests/numerics.py would need rules for the whole network and its training step.)
    torch.testing.assert_close(two["loss"], loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == two["grads"].keys()
    for name in grads:
        torch.testing.assert_close(two["grads"][name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


# --- the command end to end, tiny -----------------------------------------------------------------


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    from vdm_fast import cli

    out = str(tmp_path / "demo")
    common = ["demo", "--out", out, "--batch-size", "16", "--eval-repeats", "2", "--samples-per-class", "1",
              "--sample-steps", "4", "--ckpt-every", "3", "--no-progress"]
    assert cli.main(common + ["--steps", "3"]) == 0
    first = json.load(open(os.path.join(out, "summary.json")))
    assert first["steps"] == 3
    stale = os.path.join(out, checkpoint.TEMP_PREFIX + "killed")  # what a SIGKILLed save leaves
    open(stale, "wb").write(b"partial")
    assert cli.main(common + ["--steps", "5"]) == 0  # resumes from the step-3 checkpoint
    assert not os.path.exists(stale)
    second = json.load(open(os.path.join(out, "summary.json")))
    assert second["steps"] == 5 and second["resumed_from"] == 3
    for name in ("samples.png", "training_curve.png", "checkpoint.pt"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    for key in ("recon_bpd", "prior_bpd", "diffusion_bpd", "total_bpd"):
        assert torch.isfinite(torch.tensor(second["held_out"][key]))
        assert torch.isfinite(torch.tensor(second["held_out"][key + "_se"])) and second["held_out"][key + "_se"] >= 0
    assert second["samples_scored"] == 10


def test_best_checkpoint_is_the_minimum_of_the_ema_evaluations_and_survives_resume(tmp_path):
    from vdm_fast import cli

    out = str(tmp_path / "demo")
    common = ["demo", "--out", out, "--batch-size", "16", "--eval-repeats", "2", "--samples-per-class", "1",
              "--sample-steps", "2", "--ckpt-every", "2", "--eval-every", "2", "--no-progress", "--lr", "0.05"]
    assert cli.main(common + ["--steps", "4"]) == 0
    assert cli.main(common + ["--steps", "8"]) == 0  # resumes at 4 with the best so far
    latest = checkpoint.load(os.path.join(out, "checkpoint.pt"), keys=train.CHECKPOINT_KEYS)
    history = json.loads(latest["history"])
    evals = [h for h in history if "ema_eval_bpd" in h]
    assert [h["step"] for h in evals] == [2, 4, 6, 8]
    best = min(evals, key=lambda h: h["ema_eval_bpd"])
    kept = checkpoint.load(os.path.join(out, "best.pt"), keys=("step", "model", "held_out"))
    assert kept["step"] == best["step"] == json.loads(latest["best"])["step"]
    assert json.loads(kept["held_out"])["total_bpd"] == best["ema_eval_bpd"]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["best_step"] == best["step"] and summary["best_selection_bpd"] == best["ema_eval_bpd"]
    # the EMA is torch's AveragedModel, updated once per step of both runs
    assert int(latest["ema"]["n_averaged"]) == 8
    # the headline is a second evaluation of the kept weights on fresh draws, not the selection's figure
    assert summary["held_out"]["total_bpd"] != best["ema_eval_bpd"]


@pytest.mark.parametrize("steps,window", [(1200, 120), (6000, 600), (50, 10), (10**6, 1000)])
def test_ema_decay_averages_over_a_tenth_of_the_run(steps, window):
    assert train.ema_decay(steps) == pytest.approx(1 - 1 / window)


def test_weight_decay_spares_the_value_prior_schedule_biases_and_norms():
    vdm = train.VDM(hidden=32, depth=1)
    opt = train.optimizer(vdm, lr=1e-3, weight_decay=0.5)
    names = {id(p): n for n, p in vdm.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.5 for p in g["params"]}
    spared = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed | spared == set(names.values()) and not decayed & spared
    # both factors of the low-rank head are decayed (decaying one lets the other grow)
    assert {"net.out.2.weight", "net.level_basis", "net.inp.weight", "net.label.weight"} <= decayed
    assert {"net.value_prior", "schedule.b", "schedule.w", "net.out.2.bias",
            "net.out.0.weight"} <= spared


def test_low_rank_head_keeps_the_exact_snap_at_low_noise():
    """The head's logits only add to the exact likelihood term: at low noise x_hat is the bin centre
    nearest z / alpha whatever the (untrained) network says, so eps_hat = (z - alpha c) / sigma."""
    from vdm_fast.demo.model import Denoiser

    torch.manual_seed(0)
    net = Denoiser(dim=4, num_classes=2, hidden=16, depth=1, head_rank=3)
    torch.nn.init.normal_(net.out[-1].weight)  # a non-trivial prior
    log_snr = torch.full((5,), 16.0)
    alpha = torch.sigmoid(log_snr).sqrt()[:, None]
    sigma = torch.sigmoid(-log_snr).sqrt()[:, None]
    c = net.centres[torch.randint(0, 256, (5, 4))]
    z = alpha * c + sigma * 0.3 * torch.randn(5, 4)  # well inside c's bin at this noise
    eps = net(z, log_snr, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(eps, (z - alpha * c) / sigma, atol=1e-3, rtol=1e-3)


# --- --data DIR: the user's own images (issue 19) -------------------------------------------------


def _write_images(folder, n, colour=False, seed=0, size_range=(9, 31)):
    """n small PNG/JPEG images of random sizes: a bright blob on a dark ground (RGB when colour)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(*size_range, size=2))
        img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] += np.uint8(150)
        if not colour:
            img[..., 1] = img[..., 2] = img[..., 0]
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(img if colour or ext == "png" else img[..., 0]).save(os.path.join(folder, f"{i}.{ext}"))


TINY_RUN = ["--batch-size", "8", "--eval-repeats", "2", "--sample-steps", "2", "--steps", "2", "--no-progress",
            "--size", "6"]


def test_data_folder_with_class_subfolders_trains_guided(tmp_path):
    from vdm_fast import cli

    root = tmp_path / "images"
    _write_images(str(root / "blobs"), 12, colour=True, seed=1)
    _write_images(str(root / "greys"), 10, seed=2)
    (root / "greys" / "broken.png").write_bytes(b"\x89PNG but not really")  # undecodable: skipped, counted
    (root / "notes.txt").write_text("not an image: ignored")
    out = str(tmp_path / "out")
    assert cli.main(["demo", "--data", str(root), "--out", out, "--samples-per-class", "2"] + TINY_RUN) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["classes"] == ["blobs", "greys"] and summary["skipped_files"] == 1
    assert summary["data"].startswith("RGB 6x6") and summary["samples_scored"] == 4
    assert 0 <= summary["classifier_accuracy_on_samples"] <= 1
    best = checkpoint.load(os.path.join(out, "best.pt"), keys=("step", "model"))
    assert best["model"]["net.label.weight"].shape[0] == 3  # two classes and the null class
    assert best["model"]["net.value_prior"].shape[0] == 3 * 6 * 6  # RGB 6x6 values


def test_data_folder_without_subfolders_trains_unconditional(tmp_path):
    from vdm_fast import cli

    _write_images(str(tmp_path / "flat"), 9, seed=3)
    out = str(tmp_path / "out")
    assert cli.main(["demo", "--data", str(tmp_path / "flat"), "--out", out, "--samples-per-class", "3"] + TINY_RUN) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["classes"] == [] and summary["data"].startswith("grayscale 6x6")
    assert "classifier_accuracy_on_samples" not in summary  # nothing to score without classes
    assert os.path.getsize(os.path.join(out, "samples.png")) > 0


@pytest.mark.parametrize("content", ["empty", "only_broken", "one_image"])
def test_data_folder_with_nothing_to_train_on_exits_2(tmp_path, capsys, content):
    from vdm_fast import cli

    folder = tmp_path / "images"
    folder.mkdir()
    if content == "only_broken":
        (folder / "a.png").write_bytes(b"garbage")
        (folder / "b.jpg").write_bytes(b"")
    elif content == "one_image":
        _write_images(str(folder), 1)
    assert cli.main(["demo", "--data", str(folder), "--out", str(tmp_path / "out")] + TINY_RUN) == 2
    err = capsys.readouterr().err
    assert f"--data {folder}" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "checkpoint.pt")


@pytest.mark.parametrize("value", ["missing", "a_file"])
def test_data_flag_that_is_not_a_folder_exits_2_at_parse(tmp_path, capsys, value):
    from vdm_fast import cli

    path = tmp_path / "x.png"
    if value == "a_file":
        path.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--data", str(path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "argument --data:" in capsys.readouterr().err


def test_size_without_data_exits_2(tmp_path, capsys):
    from vdm_fast import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--size", "16", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "argument --size:" in capsys.readouterr().err


def test_resume_keeps_a_best_pt_newer_than_the_checkpoint(tmp_path):
    """A run stopped between saving best.pt and the checkpoint: the resumed run must not overwrite
    the better best.pt with a worse evaluation."""
    from vdm_fast import cli

    out = str(tmp_path / "demo")
    common = ["demo", "--out", out, "--batch-size", "16", "--eval-repeats", "2", "--samples-per-class", "1",
              "--sample-steps", "2", "--ckpt-every", "4", "--eval-every", "2", "--no-progress"]
    assert cli.main(common + ["--steps", "4"]) == 0
    best_path = os.path.join(out, "best.pt")
    kept = checkpoint.load(best_path, keys=("step", "model", "held_out"))
    record = {**json.loads(kept["held_out"]), "total_bpd": -1.0}  # better than any evaluation
    checkpoint.save({"step": 3, "model": kept["model"], "held_out": json.dumps(record)}, best_path)
    # and the checkpoint's own record worse than any evaluation, so only best.pt's can hold
    ckpt_path = os.path.join(out, "checkpoint.pt")
    latest = checkpoint.load(ckpt_path, keys=train.CHECKPOINT_KEYS)
    latest["best"] = json.dumps({**json.loads(latest["best"]), "total_bpd": 1e9})
    checkpoint.save({k: v for k, v in latest.items() if k != "checksum"}, ckpt_path)
    assert cli.main(common + ["--steps", "6"]) == 0
    assert checkpoint.load(best_path, keys=("step", "model", "held_out"))["step"] == 3
    assert json.load(open(os.path.join(out, "summary.json")))["best_step"] == 3


def test_photo_crops_tool_writes_two_class_folders_of_both_formats(tmp_path):
    """tools/photo_crops.py, the README's folder of real photographs for --data."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "photo_crops", os.path.join(os.path.dirname(__file__), "..", "tools", "photo_crops.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.write_crops(str(tmp_path), count=3) == 6
    from vdm_fast.demo import data

    dataset = data.load_folder(str(tmp_path), 8, seed=0)
    assert dataset.classes == ["china", "flower"] and dataset.image_shape == (3, 8, 8)
    assert sorted(os.listdir(tmp_path / "china")) == ["0000.png", "0001.jpg", "0002.png"]
