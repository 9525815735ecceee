"""Evidence that guidance works: a digit classifier, trained in the same run on the training
split only, labels the guided samples; its accuracy against the requested class is reported.

scikit-learn's RBF support-vector machine on the 64 grey levels is the classic digits model
(about 99 % held-out accuracy), small and deterministic.
"""

from __future__ import annotations

import torch


class DigitClassifier:
    def __init__(self, train_pixels: torch.Tensor, train_labels: torch.Tensor):
        from sklearn.svm import SVC

        self.model = SVC(gamma=0.001 * (16 / 255) ** 2, C=10.0)
        self.model.fit(self._features(train_pixels), train_labels.numpy())

    @staticmethod
    def _features(pixels: torch.Tensor):
        return pixels.reshape(pixels.shape[0], -1).double().numpy()

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.model.predict(self._features(pixels)))

    def accuracy(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        if labels.numel() == 0:
            return float("nan")
        return float((self.predict(pixels) == labels).double().mean())
