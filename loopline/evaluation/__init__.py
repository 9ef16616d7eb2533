"""Accuracy of a model on a labelled dataset: ``loopline eval``.

``metrics`` holds the pure metric functions (mAP matching, the Length-Aware Recall of Ruzaeva
et al., tolerance metrics for thin human line labels, loop F1 and relative errors, pile-up
spacing); ``data`` reads a dataset folder's ground truth; ``evaluate`` runs an engine over a
dataset and pools the metrics; ``command`` is the command-line front end.
"""
