"""Defaults that transfer: two teachers x 1/2/3 kept layers, pruned only, the old defaults and the new ones.

The protocol (``protocol.py``): SciFact's train queries are split (seeded) into an alignment part and a validation
part; every default was chosen on validation (``tune_defaults.py``); the test split is scored here, once, for the
README. Teachers: all-MiniLM-L6-v2 (6 layers, bundled) and all-mpnet-base-v2 (12 layers, fetched into the user cache
on first use by ``fetch_mpnet.py``). Documents are embedded once by each untouched teacher (cached in the user cache;
about half an hour for MPNet on 2 cores, the first time).

Rows:
- ``pruned only``: ``prune_layers(teacher, n)``, no training.
- ``old defaults``: the epoch-based recipe before the step budget (20 epochs at lr 1e-3, batch 64; 1 layer: 40 epochs
  at 3e-3, batch 32; ``spread`` layers; real queries only).
- ``new defaults``: ``align(teacher, queries, corpus=corpus, layers=n)``, everything else as the library defaults.
- ``kale-tokens option``: the same with ``loss="kale-tokens"`` (the paper's loss plus a token-level term; an option,
  not a default), scored for the report.

Then the cost check: the new defaults on 800 and on 8,000 alignment queries (real plus pseudo-queries), MiniLM 6 -> 2.

Writes ``benchmarks/results/transfer_table.{json,md,png}``. Rows already in the JSON are kept and not rerun (pass
``--rerun``), and students are kept in the user cache, so an interrupted run resumes; ``--align-only`` makes the
students before the index exists (then ``--rescore`` scores them where the JSON has rows of an earlier student:
``--align-only --rerun``, then ``--rescore``).

    python benchmarks/transfer_table.py
    python benchmarks/transfer_table.py --teachers minilm --layers 2 --rows new
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from fetch_mpnet import cache_root
from protocol import TEACHERS, Splits, corpus_embeddings, load_teacher, scifact_splits, score
from sentence_transformers import SentenceTransformer

import kale_st

RESULTS = Path(__file__).parent / "results" / "transfer_table"
ROWS = ("pruned only", "old defaults", "new defaults", "kale-tokens option")
#: The epoch-based recipe of kale_st before the step budget (by kept layers; other counts: the ``None`` entry).
OLD_RECIPES = {
    1: {"epochs": 40, "learning_rate": 3e-3, "batch_size": 32},
    None: {"epochs": 20, "learning_rate": 1e-3, "batch_size": 64},
}


def student_folder(row: str, name: str, layers: int) -> Path:
    """Where the query model of one row is kept in the user cache (with ``made.json``, what its making recorded)."""
    return cache_root() / "transfer_students" / f"{name}-{layers}-{row.split()[0]}"


def student(
    row: str, name: str, teacher: SentenceTransformer, layers: int, splits: Splits, reuse: bool
) -> tuple[object, dict]:
    """The query model of one row and what its making recorded, kept in the user cache for reuse."""
    folder = student_folder(row, name, layers)
    if reuse and (folder / "made.json").is_file():
        return SentenceTransformer(str(folder), device="cpu"), json.loads((folder / "made.json").read_text())
    model, made = make_student(row, teacher, layers, splits)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    (partial / "made.json").write_text(json.dumps(made))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return model, made


def make_student(row: str, teacher: SentenceTransformer, layers: int, splits: Splits) -> tuple[object, dict]:
    if row == "pruned only":
        pruned = kale_st.prune_layers(teacher, layers)
        return pruned, {"kept_layers": kale_st.pruning_info(pruned)["kept_layers"], "steps": 0, "seconds": 0.0}
    start = time.perf_counter()  # wall time of the whole align call: layer search, teacher targets, training
    if row == "old defaults":
        recipe = OLD_RECIPES.get(layers, OLD_RECIPES[None])
        pair = kale_st.align(teacher, splits.alignment, layers=layers, strategy="spread", early_stopping=False,
                             dropout=True, disable_tqdm=True, **recipe)
    else:
        loss = {"loss": "kale-tokens"} if row == "kale-tokens option" else {}
        pair = kale_st.align(teacher, splits.alignment, corpus=splits.test.corpus, layers=layers, disable_tqdm=True,
                             **loss)
    seconds = round(time.perf_counter() - start, 1)
    meta = pair.metadata
    recipe = f"{meta['epochs']:g} epochs" if "epochs" in meta else f"budget {meta['max_steps']} steps"
    return pair.query_model, {
        "kept_layers": meta["kept_layers"],
        "alignment_queries": meta["num_queries"],
        "recipe": f"{recipe}, lr {meta['learning_rate']:g}, batch {meta['batch_size']}"
                  + (", bf16" if meta.get("precision") == "bf16" else "")
                  + (", no dropout" if meta.get("dropout") is False else "")  # False: trained without dropout
                  + (f", real queries x{meta['real_query_copies']}" if meta.get("real_query_copies", 1) > 1 else "")
                  + (", token term" if meta.get("loss_config", {}).get("token_weight") else ""),
        "steps": meta["training_steps"],
        "stop_reason": meta["stop_reason"],
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=["minilm", "mpnet"])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", nargs="+", choices=["pruned", "old", "new", "kale-tokens"],
                        default=["pruned", "old", "new", "kale-tokens"])
    parser.add_argument("--no-cost", action="store_true", help="skip the 800 vs 8,000 queries cost check")
    parser.add_argument("--rerun", action="store_true", help="rerun rows already in the JSON")
    parser.add_argument("--rescore", action="store_true",
                        help="score rows already in the JSON again with their cached students (aligned if none)")
    parser.add_argument("--align-only", action="store_true",
                        help="make and cache the students, score nothing (no index needed yet)")
    args = parser.parse_args()
    wanted = [row for row in ROWS if row.split()[0] in args.rows]

    results = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").is_file() else {}
    rows: list[dict] = results.get("rows", [])
    splits = scifact_splits()
    for name in args.teachers:
        teacher = load_teacher(name)
        total = kale_st.num_layers(teacher)
        if not args.align_only:
            documents = corpus_embeddings(teacher, splits)
            base = {"validation": score(teacher, splits.validation, documents),
                    "test": score(teacher, splits.test, documents)}
            upsert(rows, {"teacher": name, "layers": total, "row": "teacher", **base, "steps": 0, "seconds": 0.0})
        for layers in args.layers:
            for row in wanted:
                key = {"teacher": name, "layers": layers, "row": row}
                done = any(all(r.get(k) == v for k, v in key.items()) for r in rows)
                if done and not (args.rerun or args.rescore or args.align_only):
                    continue
                model, made = student(row, name, teacher, layers, splits, reuse=not args.rerun)
                if args.align_only:
                    continue
                record = {**key, "of": total, **made, "validation": score(model, splits.validation, documents),
                          "test": score(model, splits.test, documents)}
                record["percent_of_teacher"] = round(100 * record["test"] / base["test"], 1)
                print(json.dumps(record), flush=True)
                upsert(rows, record)
                save(rows, results.get("cost"))
    if args.align_only:
        return
    cost = results.get("cost")
    if not args.no_cost and (cost is None or args.rerun):
        cost = cost_check(splits)
    save(rows, cost)
    print(RESULTS.with_suffix(".md").read_text())


def cost_check(splits) -> dict:
    """Wall time of the whole ``align`` call (new defaults, MiniLM 6 -> 2) on 800 and on 8,000 alignment queries."""
    teacher = load_teacher("minilm")
    pool = splits.alignment + kale_st.pseudo_queries(splits.test.corpus, 8000, seed=1)
    seconds = {}
    for size in (800, 8000):
        start = time.perf_counter()
        pair = kale_st.align(teacher, pool[:size], layers=2, disable_tqdm=True)
        seconds[size] = round(time.perf_counter() - start, 1)
        print(f"{size} alignment queries: {seconds[size]} s, {pair.metadata['training_steps']} steps", flush=True)
    return {"seconds_800": seconds[800], "seconds_8000": seconds[8000], "ratio": round(seconds[8000] / seconds[800], 2)}


def upsert(rows: list[dict], record: dict) -> None:
    """Put ``record`` in ``rows``, replacing the row of the same teacher, layer count and kind."""
    key = ("teacher", "layers", "row")
    for i, row in enumerate(rows):
        if all(row.get(k) == record.get(k) for k in key):
            rows[i] = record
            return
    rows.append(record)


def save(rows: list[dict], cost: dict | None) -> None:
    machine = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor()}
    order = {name: i for i, name in enumerate(("teacher", *ROWS))}
    rows.sort(key=lambda r: (list(TEACHERS).index(r["teacher"]), -r["layers"] if r["row"] == "teacher" else r["layers"],
                             order[r["row"]]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows, "cost": cost}, indent=1))
    RESULTS.with_suffix(".md").write_text(markdown(rows, cost))
    plot(rows)


def markdown(rows: list[dict], cost: dict | None) -> str:
    header = ["teacher", "query layers", "model", "recipe", "steps", "stop", "align time", "validation nDCG@10",
              "test nDCG@10", "% of teacher (test)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        layers = f"{r['layers']}" if r["row"] == "teacher" else f"{r['layers']}/{r['of']} {r['kept_layers']}"
        lines.append("| " + " | ".join([
            r["teacher"], layers, r["row"], r.get("recipe", "-"), str(r["steps"]), r.get("stop_reason", "-"),
            f"{r['seconds']:.0f} s", f"{r['validation']:.4f}", f"{r['test']:.4f}",
            f"{r.get('percent_of_teacher', 100.0):.1f} %",
        ]) + " |")
    if cost:
        lines.append(f"\nCost, new defaults, MiniLM 6 -> 2: {cost['seconds_800']:.0f} s on 800 alignment queries, "
                     f"{cost['seconds_8000']:.0f} s on 8,000 ({cost['ratio']:.2f}x).")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axes = plt.subplots(1, len(TEACHERS), figsize=(10, 4), sharey=True)
    for axis, name in zip(axes, TEACHERS):
        for row in ROWS:
            points = sorted((r["layers"], r["percent_of_teacher"]) for r in rows if r["teacher"] == name and r["row"] == row)
            if points:
                axis.plot(*zip(*points), marker="o", label=row)
        axis.set(title=TEACHERS[name], xlabel="query layers kept", xticks=[1, 2, 3])
        axis.axhline(100, color="grey", linewidth=0.5)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("% of the teacher's test nDCG@10")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(RESULTS.with_suffix(".png"), dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
