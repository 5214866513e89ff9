"""Evaluation of learned features the way the paper judges them (docs/design.md section 2).

`python -m dcjax.evaluate --workdir=RUN --protocol=linear|knn|clustering` (see `__main__`):
  * linear: linear probes on each conv layer of the frozen network (`linear.py`);
  * knn: weighted k-nearest-neighbour classification on fc7 and PCA-whitened fc7 (`knn.py`);
  * clustering: k-means with k = number of classes on the held-out split (`protocols.py`).
Each is an evaluator (`evaluators.py`), built from `config.evals` or from the command line, which
the trainer also runs every few epochs. Features are extracted sharded on the devices
(`dcjax/features.py`).
"""
