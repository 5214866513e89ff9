"""`evaluate(config, workdir, protocol, init, features, step)`: one evaluator (evaluators.py) on one
run, its result written to RUN/eval/<name>.json and printed as a table (the command line is
`__main__`)."""

from __future__ import annotations


def linear_variant(config) -> str:
    """Which linear probe a config runs, as result_name's `views`: 'reference' under
    config.eval.protocol='reference', else config.eval.linear_views."""
    e = config.eval
    return "reference" if e.get("protocol") == "reference" else e.linear_views


def result_name(protocol: str, init: str, features: str, views: str = "augmented") -> str:
    """eval/<name>.json: linear | linear_random | linear_pixels (and linear_center,
    linear_center_random for the centre-view probe, linear_translate* for the reference's views,
    linear_reference* for the reference protocol), likewise knn_*, clustering_*."""
    if features == "pixels":
        if protocol == "linear" and views == "reference":
            return "linear_reference_pixels"
        return f"{protocol}_pixels"
    if protocol == "linear" and views in ("center", "translate", "reference"):
        protocol = f"linear_{views}"
    if init not in ("trained", "random"):  # a converted network's folder
        from pathlib import Path

        init = "init_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(init).name)
    return protocol if init == "trained" else f"{protocol}_{init}"


def format_result(protocol: str, result: dict) -> str:
    from dcjax.writers import markdown_table

    if protocol == "linear":
        tested = len(next(iter(result["layers"].values())).get("top1_after_epochs", {})) > 1
        return markdown_table(
            ["layer", "dim", "pooling", f"top-1 (epoch {result['epochs']})",
             *(["best top-1 on test (after epochs)"] if tested else [])],
            [[name, r["dim"], r["pooling"], f"{100 * r['top1']:.2f}",
              *([f"{100 * r['best_top1']:.2f} ({r['best_after_epochs']})"] if tested else [])]
             for name, r in result["layers"].items()])
    if protocol == "knn":
        return markdown_table(["features", f"kNN top-1 (k={result['k']}, {result['weights']})"],
                              [[name, f"{100 * v:.2f}"] for name, v in result["features"].items()])
    if protocol == "comparison":
        names = [("DeepCluster", "deepcluster"), ("random init", "random_init"),
                 ("raw pixels", "pixels")]
        return markdown_table(
            ["features", "k", f"NMI (mean of {result['restarts']} k-means)", "sd",
             "NMI on ReLU(fc7)"],
            [[label, result["k"], f"{result[key]['nmi']:.4f}", f"{result[key]['nmi_std']:.4f}",
              f"{result[key]['after_relu']['nmi']:.4f}" if "after_relu" in result[key] else "-"]
             for label, key in names if key in result])
    return markdown_table(["features", "k", "NMI", "ARI", "accuracy"],
                          [[result["features"], result["k"], f"{result['nmi']:.4f}",
                            f"{result['ari']:.4f}", f"{100 * result['accuracy']:.2f}"]])


def evaluate(config, workdir: str, protocol: str, init: str = "trained", features: str = "network",
             step: int | None = None, given=()) -> dict:
    """`given`: the config fields set on a command line, which config.eval.protocol='reference'
    leaves as they are (config_lib.apply_eval_protocol)."""
    import jax

    from dcjax.config_lib import apply_eval_protocol
    from dcjax.evaluate import common, evaluators
    from dcjax.evaluate.representations import NetworkEmbedding
    from dcjax.runs import load_network
    from dcjax.sharding import default_mesh

    apply_eval_protocol(config, given)
    evaluator = evaluators.build(protocol, config, features=features)
    mesh = default_mesh()
    splits = common.open_splits(config, held_out_required=protocol != "comparison")
    net = None
    if features == "network":
        net = load_network(config, workdir, init, step, mesh)
    result = evaluator.run(NetworkEmbedding(net) if net is not None else None, splits, mesh)
    result = {"protocol": protocol, "init": init if net is not None else None,
              "features": features, "checkpoint_step": net.step if net is not None else None,
              "dataset": config.data.name, "eval_split": splits.test_split,
              "devices": jax.device_count(), **result}
    name = result_name(protocol, init, features, linear_variant(config))
    path = common.write_result(workdir, name, result)
    if jax.process_index() == 0:
        print(format_result(protocol, result))
        print(f"written to {path}")
    return result
