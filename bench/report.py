"""The Markdown of ``make bench``: the tables of bench/results.md and README's Performance section."""

from __future__ import annotations

from typing import Any

from bench import dag_parse
from bench.ablation import ablation_table
from bench.serving import serving_table
from bench.worker import HAND_EF_SEARCH, TUTORIAL_FOLDS, tutorial_fits
from privacy_pipeline.config import ConversationsConfig

FLAT_MAX_VECTORS = ConversationsConfig().flat_max_vectors


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def _f1(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def training_table(results: dict[str, Any], checks: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| side | rows | wall s | peak RSS MiB | clean macro-F1 | ratio vs target | met? |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    training = {int(rows): block for rows, block in results.get("training", {}).items()}
    if not training:
        return []
    small, large = min(training), max(training)
    for rows, block in sorted(training.items()):
        ours, tutorial = block["ours"], block["tutorial"]
        ratio, met = "", ""
        if rows == small and "speed_vs_tutorial" in checks:
            speed, quality, rss = checks["speed_vs_tutorial"], checks["f1_vs_tutorial"], checks["rss_vs_tutorial"]
            if tutorial["stopped"]:
                faster = f">= {tutorial['wall_s'] / ours['wall_s']:.1f}x (estimated {speed['ratio']:.1f}x)"
            else:
                faster = f"{speed['ratio']:.1f}x"
            ratio = f"{faster} faster than tutorial (>= 40x); RSS {rss['ratio']:.2f}x tutorial's (<= 0.7x)"
            met = f"speed {_met(speed['met'])}{' (' + speed['note'] + ')' if speed['note'] else ''}, "
            met += f"RSS {_met(rss['met'])}"
            if quality["ratio"] is not None:
                ratio += f"; F1 {quality['ratio']:+.3f} vs tutorial clean (>= -0.01)"
                met += f", F1 {_met(quality['met'])}"
        if rows == large and "vs_lrcv" in checks:
            ratio = f"{checks['vs_lrcv']['ratio']:.2f}x LogisticRegressionCV's time (<= 1.5x at its clean F1 - 0.01)"
            met = _met(checks["vs_lrcv"]["met"])
        lines.append(
            f"| ours: tune ({ours['tune_shards']} pods) + select + train | {rows:,} | {ours['wall_s']:.1f} | "
            f"{ours['peak_rss_mib']:.0f} | {_f1(ours['clean_f1'])} | {ratio} | {met} |"
        )
        one = ours["tune_1_shard"]
        lines.append(
            f"| ours: tune as 1 pod (search alone {one['report']['search_seconds']:.1f}s) | {rows:,} | "
            f"{one['wall_s']:.1f} | {one['peak_rss_mib']:.0f} |  |  |  |"
        )
        grid = f"GridSearchCV {tutorial_fits() // TUTORIAL_FOLDS} candidates x {TUTORIAL_FOLDS} folds, 2 jobs"
        if tutorial.get("estimated"):
            wall = f"est. ~{tutorial['estimated_wall_s']:.0f}" if tutorial["estimated_wall_s"] else "n/a"
            lines.append(
                f"| tutorial: SMOTE all, split, {grid} — **not run**: the smaller size's mean fit time x "
                f"{tutorial['row_scale']:.1f} (rows) | {rows:,} | {wall} | n/a | n/a |  |  |"
            )
        elif tutorial["stopped"]:
            estimate = tutorial.get("estimated_wall_s")
            lines.append(
                f"| tutorial: SMOTE all, split, {grid} — **stopped** at its budget after {tutorial['fits_done']} "
                f"of {tutorial['fits']} fits (mean fit {tutorial['mean_fit_s'] or float('nan'):.0f}s) | {rows:,} | "
                f"> {tutorial['wall_s']:.0f} (est. ~{estimate or float('nan'):.0f}) | {tutorial['peak_rss_mib']:.0f} | "
                "n/a |  |  |"
            )
        else:
            report = tutorial["report"]
            lines.append(
                f"| tutorial: SMOTE all, split, {grid} (its own leaked test F1 {report['leaked_test_f1']:.3f}) | "
                f"{rows:,} | {tutorial['wall_s']:.1f} | {tutorial['peak_rss_mib']:.0f} | "
                f"{_f1(report['clean_f1'])} |  |  |"
            )
        for key, label in (
            ("expert_grid", "expert: imblearn scaler → SMOTE → lbfgs, GridSearchCV, float32"),
            ("expert_lrcv", "expert: LogisticRegressionCV, balanced weights, no SMOTE"),
        ):
            side = block[key]
            lines.append(
                f"| {label} | {rows:,} | {side['wall_s']:.1f} | {side['peak_rss_mib']:.0f} | "
                f"{_f1(side['report']['clean_f1'])} |  |  |"
            )
        if "floor" in block and "vs_floor" in checks:
            floor = block["floor"]
            check = checks["vs_floor"]
            report = floor["report"]
            lines.append(
                f"| floor: {floor['total_lbfgs_iterations']} lbfgs iterations x one X.T @ (X @ W) pass over a CV "
                f"fold as fitted ({report['fitted_rows']:,} rows after SMOTE x {report['dim']}, {report['classes']} "
                f"classes, {report['resampled_pass_seconds'] * 1000:.0f} ms); over the fold's own "
                f"{report['fold_rows']:,} rows {floor['fold_floor_s']:.1f} s, over the split with one column "
                f"{floor['literal_floor_s']:.1f} s | {rows:,} | {floor['floor_s']:.1f} |  |  | "
                f"tune wall {check['ratio']:.2f}x the floor (<= 3x) | {_met(check['met'])} |"
            )
    return lines


def other_table(results: dict[str, Any], checks: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| side | size | measured | peak RSS MiB | ratio vs target | met? |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    if "featurize" in results:
        featurize = results["featurize"]
        ours, bare = featurize["ours"], featurize["bare_encode"]
        check = checks["featurize_cpu"]
        report = bare["report"]
        with_load = report["texts"] / (report["seconds"] + report["load_seconds"])
        lines.append(
            f"| featurize stage, CPU (model load + encode + handcrafted features) | {featurize['texts']:,} texts | "
            f"{ours['report']['texts_per_second']:.0f} texts/s (stage wall {ours['wall_s']:.1f}s) | "
            f"{ours['peak_rss_mib']:.0f} | {check['ratio']:.2f}x bare load + encode() (>= 0.9x); min cosine "
            f"{report['min_cosine_vs_ours']:.5f} | {_met(check['met'])} |"
        )
        lines.append(
            f"| bare SentenceTransformer.encode(), CPU | {featurize['texts']:,} texts | "
            f"{with_load:.0f} texts/s with its {report['load_seconds']:.1f}s model load, "
            f"{report['texts_per_second']:.0f} encode alone | {bare['peak_rss_mib']:.0f} |  |  |"
        )
        lines.append(f"| featurize, GPU | | {featurize['gpu']} | | >= 25,000 texts/s on an H100 | n/a |")
    if "search" in results:
        search = results["search"]
        size = f"{search['base']:,} x {search['dim']}, {search['queries']:,} queries, top-10"
        for key, label in (
            ("numpy", "numpy exact (batched matmul)"),
            ("ours", "our published index"),
            ("hnsw", "FAISS HNSW, hand-configured"),
        ):
            report = search[key]["report"]
            ratio, met = "", ""
            if key == "ours" and report["index_kind"] == "hnsw":
                label += f" (HNSW, M={report['hnsw_m']}, efConstruction={report['ef_construction']}"
                if "held_out_queries" in report:
                    label += (
                        f", efSearch={report['ef_search']} chosen at publish for recall@10 >= "
                        f"{report['target_recall_at_10']} on {report['held_out_queries']:,} held-out vectors)"
                    )
                else:
                    label += f", efSearch={report['ef_search']})"
            elif key == "ours":
                label += f" ({report['index_kind']}: under {FLAT_MAX_VECTORS:,} vectors)"
            elif key == "hnsw" and "tried" in report:
                label = (
                    "FAISS HNSW, best hand-configured reaching ours' recall "
                    f"({len(report['tried'])} builds, efSearch {'/'.join(map(str, HAND_EF_SEARCH))} each, "
                    "picked on these very queries"
                )
                if not report["reached"]:
                    lines.append(f"| {label}: none reached it) | {size} | n/a |  |  |  |")
                    continue
                label += f": M={report['hnsw_m']}, efConstruction={report['ef_construction']}, "
                label += f"efSearch={report['ef_search']})"
            elif key == "hnsw":
                label += f" (M={report['hnsw_m']}, efSearch={report['ef_search']})"
            build = f", build {report['build_seconds']:.0f}s" if report["build_seconds"] else ""
            if key == "ours":
                ratio = f"{checks['search']['ratio']:.2f}x 10,000 QPS; recall >= 0.98"
                met = _met(checks["search"]["met"])
                if "search_vs_hand" in checks:
                    vs_hand = checks["search_vs_hand"]
                    versus = "n/a" if vs_hand["ratio"] is None else f"{vs_hand['ratio']:.2f}x"
                    ratio += f"; QPS {versus} the best hand-configured HNSW at its recall (>= 1x)"
                    met += f", vs hand {_met(vs_hand['met'])}"
            lines.append(
                f"| {label} | {size} | {report['qps']:,.0f} QPS, recall@10 {report['recall_at_10']:.3f}{build} | "
                f"{search[key]['peak_rss_mib']:.0f} | {ratio} | {met} |"
            )
    if "files" in results.get("dag_parse", {}):  # older results.json: measured against an empty DAG
        lines += dag_parse.table_rows(results["dag_parse"], _met)
    if "demo" in results:
        demo = results["demo"]
        check = checks["demo"]
        lines.append(
            f"| make demo, end to end (fresh home) | {demo['rows']:,} messages | {demo['wall_s']:.0f} s | "
            f"{demo['peak_rss_mib']:.0f} (whole tree) | {check['ratio']:.2f}x the 180 s budget | {_met(check['met'])} |"
        )
        for stage, entry in demo["stages"].items():
            lines.append(f"| demo stage: {stage} | | ~{entry['seconds']:.0f} s | {entry['peak_rss_mib']:.0f} |  |  |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    checks = results["targets"]
    info = results["machine"]
    head = [
        f"Measured {results['date']} on {info['nproc']} cores ({info['cpu_model']}), {info['ram_gib']} GiB RAM, "
        f"{info['os']}, Python {info['python']}; load average before/after "
        f"{results['load_average_start']} / {results['load_average_end']}. Command: `{results['command']}` "
        f"({results['mode']} run, {results['total_seconds'] / 60:.1f} min).",
        *(
            f"The {section} rows were re-measured {entry['date']} (load average {entry['load_average']}) "
            f"with `{entry['command']}`."
            for section, entry in results.get("recorded", {}).items()
        ),
        "",
    ]
    body = training_table(results, checks)
    if body:
        body.append("")
    body += other_table(results, checks)
    body += serving_table(results, checks)
    body += ablation_table(results)
    for section, error in results.get("errors", {}).items():
        first_line = error.strip().splitlines()[0] if error.strip() else "failed"
        body += ["", f"**{section} failed**: `{first_line[:300]}` (see bench/out/)"]
    return "\n".join([*head, *body]) + "\n"
