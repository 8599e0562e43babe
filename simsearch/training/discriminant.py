"""A discriminant back-end for verification: linear discriminant analysis of a trained Siamese model's embeddings.

After training, the training images' embeddings and their labels (identities; a writer's forgeries are a label
of their own) fit an LDA (scikit-learn's eigen solver, the within-class covariance shrunk by the Ledoit–Wolf rule):
its axes stretch the directions along which identities differ and shrink those along which one identity's images
vary (pose, light, a pen's pressure). An embedding ``z`` becomes ``normalise(z @ axes)``, compared by the same
distance as before. This is the back-end of speaker and face verification systems (x-vectors, then LDA and a
cosine or PLDA score).

With ``train --discriminant auto`` (off by default), whether a model gets it is decided on identities it never
saw: the cross-fitted calibration (``calibrate``) scores every fold's held-out pairs with and without the back-end
fitted on that fold's own training identities, and the final model keeps the back-end only when its pooled EER is
the lower (``CrossFit.choose``). Measured on AT&T faces, 4 folds of 7 unseen people: one model per fold
(``bench/verification_explore.py``) mean EER 0.096 without, 0.073 with; through ``train``
(``bench/quality.py``) 0.100 and 0.095, the FAR promised 6.7% / measured 7.9% without, 6.2% / 11.4% with — too
small a gain for a less exact promise to make it the default.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Fewer axes than this make too coarse a direction to compare (two identities give one axis: every embedding
#: would become +1 or −1).
MIN_AXES = 2


def fit_discriminant(z: np.ndarray, labels: np.ndarray, most: int | None = None) -> np.ndarray | None:
    """The LDA axes (d, m) of embeddings ``z`` (n, d) with integer ``labels`` (n,; negative: unlabelled, left
    out), the leading m = min(labels − 1, d, ``most``); None when there are too few labels for ``MIN_AXES`` axes
    or no label has two images (no within-label variation to learn). ``most``: the final model keeps as many axes
    as its fold models had, so that distances keep the scale the threshold was calibrated on (normalised vectors
    of more dimensions lie farther apart)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    keep = labels >= 0
    z, labels = np.asarray(z[keep], np.float64), labels[keep]
    classes, counts = np.unique(labels, return_counts=True)
    axes = min(len(classes) - 1, z.shape[1], most if most is not None else z.shape[1])
    if axes < MIN_AXES or counts.max(initial=0) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collinear embeddings: the shrinkage is what handles them
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(z, labels)
    scalings = np.asarray(lda.scalings_[:, :axes], np.float32)
    if not np.isfinite(scalings).all():
        return None
    return np.ascontiguousarray(scalings)


def apply_discriminant(z: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Embeddings ``z`` (n, d) through the axes (d, m), on the unit sphere: what the model's last layer does."""
    p = np.asarray(z, np.float32) @ axes
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
