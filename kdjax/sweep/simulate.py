"""Power before paying: run a manifest's design many times with a planted trainer.

`kdjax simulate MANIFEST --effects FILE` runs the manifest's whole design (pairs, seeds, search
and its stages) through the real planner, driver and ledger, with a plug-in trainer
(`planted`) whose answers are known, then analyses each simulated study with the report's own
statistics (`kdjax.analysis`) and prints per option how often the study detects its effect
(power), the bias of the estimate and how often the interval covers the truth. Nothing trains.

The effects file (YAML), effects in points of the study's metric, added up:

    effects:                 # per axis and option; an option not listed adds 0
      distance: {mse: -0.5}
      alpha: {1.0: -1.0}
      tau_t: {4.0: 2.0}
    base: 0.80               # a KD run's score with every effect 0; or per "dataset/student"
    baseline: -1.0           # the no-KD run, relative to base (default 0)

Noise: each run's true score gets a normal seed-to-seed deviation (`seed_sd`, points); its
validation and test scores are the mean outcome over `val_n` and `test_n` examples, each
example right with the run's score as probability; outcomes of two runs on one example are
correlated (`rho`, the share of an example's difficulty common to all runs).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdjax.config import ConfigError
from kdjax.sweep.compose import read_composed
from kdjax.sweep.manifest import AXES

PLANTED = "planted.json"  # in the simulated study's workdir, read by `planted`


@dataclass(frozen=True)
class Noise:
    seed_sd: float = 0.5  # points: a run's true score, seed to seed
    test_n: int = 2000
    val_n: int = 1000
    rho: float = 0.5  # share of an example's difficulty common to every run

    @classmethod
    def parse(cls, text: str | None, base: Noise | None = None) -> Noise:
        """'seed_sd=0.8,test_n=800' over `base` (or the stated defaults)."""
        out = asdict(base or cls())
        for item in filter(None, (text or "").split(",")):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in out:
                raise ConfigError(f"--noise: unknown key {key!r}; allowed: {', '.join(out)}")
            try:
                out[key] = type(out[key])(value)
            except ValueError:
                raise ConfigError(f"--noise: {key} must be a number, got {value!r}") from None
        n = cls(**out)
        if n.seed_sd < 0 or n.test_n < 1 or n.val_n < 1 or not 0 <= n.rho < 1:
            raise ConfigError(f"--noise: need seed_sd >= 0, test_n, val_n >= 1, 0 <= rho < 1: {n}")
        return n


def option_key(value: Any) -> Any:
    """Options compared by value: numbers as floats ('1', 1 and 1.0 alike), names as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def read_effects(path: str | Path) -> dict[str, Any]:
    """The effects file (YAML), checked (`parse_effects`)."""
    return parse_effects(yaml.safe_load(Path(path).read_text()) or {}, str(path))


def parse_effects(raw: Any, where: str = "effects") -> dict[str, Any]:
    """Planted effects, checked: axes known, effects numbers, base in (0, 1), identical
    options with equal effects."""
    if not isinstance(raw, dict) or not set(raw) <= {"effects", "base", "baseline", "identical"}:
        raise ConfigError(f"{where}: expected a mapping with effects, base, baseline, identical")
    identical = raw.get("identical") or {}
    if not isinstance(identical, dict) or not set(identical) <= {"teacher", "distance"}:
        raise ConfigError(f"{where}: identical: a mapping of teacher and/or distance to options")
    effects: dict[str, dict[Any, float]] = {}
    for axis, opts in (raw.get("effects") or {}).items():
        if axis not in AXES or not isinstance(opts, dict):
            raise ConfigError(
                f"{where}: effects.{axis}: unknown axis or not a mapping; axes: {AXES}"
            )
        for o, v in opts.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{where}: effects.{axis}.{o}: must be a number (points)")
        effects[axis] = {option_key(o): float(v) for o, v in opts.items()}
    base = raw.get("base", 0.8)
    for b in base.values() if isinstance(base, dict) else [base]:
        if isinstance(b, bool) or not isinstance(b, int | float) or not 0 < b < 1:
            raise ConfigError(f"{where}: base: a score in (0, 1) (or one per 'dataset/student')")
    same = {a: [str(o) for o in opts] for a, opts in identical.items()}
    for a, opts in same.items():
        if any(
            effects.get(a, {}).get(o, 0.0) != effects.get(a, {}).get(opts[0], 0.0) for o in opts
        ):
            raise ConfigError(f"{where}: identical.{a}: options {opts} have different effects")
    return {"effects": effects, "base": base, "baseline": float(raw.get("baseline", 0.0)),
            "identical": same}  # fmt: skip


# -- the planted trainer ---------------------------------------------------------------------


def _planted_setup(path: str) -> dict[str, Any]:
    return _read_setup(path, Path(path).stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_setup(path: str, mtime: int) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _effect(effects: dict[str, dict[str, float]], cfg: dict[str, Any], axis: str) -> float:
    kd, table = cfg["kd"], effects.get(axis, {})
    value = cfg["teacher_checkpoint"] if axis == "teacher" else kd[axis]
    if axis == "tau_s" and value == "same" and "same" not in table:
        value = kd["tau_t"]  # 'same' is tau_s = tau_t
    return table.get(str(option_key(value)), 0.0)


def true_score(cfg: dict[str, Any], setup: dict[str, Any], pair: str) -> float:
    """The planted expected score of a run (no noise)."""
    base = setup["base"]
    base = base.get(pair, 0.8) if isinstance(base, dict) else base
    if cfg.get("teacher") is None:
        return min(base + 0.05, 0.99)
    kd = cfg.get("kd")
    if kd is None or kd["alpha"] == 0:
        return base + setup["baseline"] / 100
    return base + sum(_effect(setup["effects"], cfg, a) for a in AXES) / 100


def outcomes(rng: np.random.Generator, difficulty: np.ndarray, q: float, rho: float) -> np.ndarray:
    """0/1 per example: right where the example's difficulty (shared with every run, weight
    rho) plus the run's own noise falls below the score's normal quantile."""
    from scipy.stats import norm

    z = math.sqrt(rho) * difficulty + math.sqrt(1 - rho) * rng.standard_normal(len(difficulty))
    return (z < norm.ppf(min(max(q, 1e-4), 1 - 1e-4))).astype(int)


def _seed(*parts: Any) -> list[int]:
    return [int(hashlib.sha256(str(p).encode()).hexdigest()[:8], 16) for p in parts]


def planted(cfg: dict[str, Any]) -> dict[str, Any]:
    """The plug-in trainer of simulated studies: scores from the setup in the workdir."""
    run_dir = Path(cfg["output_dir"])
    setup = _planted_setup(str(run_dir.parents[1] / PLANTED))
    noise = Noise(**setup["noise"])
    dataset = setup["datasets"][_key(cfg["data"])]
    student = setup["students"].get(_key(cfg["model"]), "teacher")
    pair = f"{dataset}/{student}"
    rng = np.random.default_rng(_seed(setup["repeat"], _as_trained(cfg, pair, setup["identical"])))
    q = true_score(cfg, setup, pair) + rng.normal(0, noise.seed_sd / 100)
    examples = np.random.default_rng(_seed(setup["repeat"], dataset))  # shared by every run
    val_d, test_d = examples.standard_normal(noise.val_n), examples.standard_normal(noise.test_n)
    val = outcomes(rng, val_d, q, noise.rho).mean()
    test = outcomes(rng, test_d, q, noise.rho)
    return {"val_metric": float(val), "test_metric": float(test.mean()), "test_correct": test}


def _as_trained(cfg: dict[str, Any], pair: str, identical: dict[str, list[str]]) -> str:
    """The run's identity for its noise, independent of where the study lives: the pair, the
    KD settings and the training settings (seed included). Options planted as identical
    (`identical`: e.g. {"teacher": ["hs", "ll"]}, a teacher whose two checkpoints are one
    epoch) give one run."""
    kd = dict(cfg.get("kd") or {})
    ckpt = cfg.get("teacher_checkpoint") if cfg.get("teacher") else None
    if kd and kd["alpha"] > 0:
        if ckpt in identical.get("teacher", []):
            ckpt = identical["teacher"][0]
        if kd["distance"] in identical.get("distance", []):
            kd["distance"] = identical["distance"][0]
    return _key({"pair": pair, "kd": kd, "teacher": ckpt, "train": cfg["train"]})


def _key(section: dict[str, Any]) -> str:
    return json.dumps(section, sort_keys=True)


# -- the simulation ----------------------------------------------------------------------------


def truths(m: Any, effects: dict[str, dict[Any, float]]) -> dict[tuple[str, Any], float]:
    """Each swept option's true effect: its planted effect minus the axis's best option's."""
    out = {}
    for axis in m.axes.swept():
        planted_ = {option_key(v): effects.get(axis, {}).get(option_key(v), 0.0)
                    for v in getattr(m.axes, axis)}  # fmt: skip
        top = max(planted_.values())
        out.update({(axis, v): e - top for v, e in planted_.items()})
    return out


def _setup(planner: Any, spec: dict[str, Any], noise: Noise, repeat: int) -> dict[str, Any]:
    datasets: dict[str, str] = {}
    students: dict[str, str] = {}
    for d, s in planner.pairs():
        cfg = planner.baseline(d, s, planner.m.seeds[0]).config.model_dump(mode="json")
        for table, key, name in (
            (datasets, _key(cfg["data"]), d),
            (students, _key(cfg["model"]), s),
        ):
            if table.setdefault(key, name) != name:
                raise ConfigError(
                    f"{table[key]!r} and {name!r} have the same data or model; a simulation "
                    "tells pairs apart by them (make them differ, e.g. in max_length)"
                )
    effects = {a: {str(k): v for k, v in t.items()} for a, t in spec["effects"].items()}
    return {"effects": effects, "base": spec["base"], "baseline": spec["baseline"],
            "identical": spec.get("identical", {}), "noise": asdict(noise), "repeat": repeat,
            "datasets": datasets, "students": students}  # fmt: skip


def plant(planner: Any, spec: dict[str, Any], noise: Noise, repeat: int = 0) -> None:
    """Set up `planner`'s workdir for a study trained by `planted` (manifest
    `trainer: kdjax.sweep.simulate:planted`): the effects `spec` (`read_effects`), the noise
    and the repeat's random streams."""
    planner.workdir.mkdir(parents=True, exist_ok=True)
    (planner.workdir / PLANTED).write_text(json.dumps(_setup(planner, spec, noise, repeat)))


def simulate(
    manifest: str | Path,
    effects: dict[str, Any],
    noise: Noise,
    repeats: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    keep: str | Path | None = None,
) -> Any:
    """Run the manifest's design `repeats` times with the planted trainer; per option: the
    truth, the mean estimate and its bias, power (P[adjusted p < alpha]) and the interval's
    coverage of the truth, as a pandas DataFrame. `keep`: where the simulated workdirs go
    (default: a temporary directory, removed)."""
    import pandas as pd

    from kdjax.analysis import effects_frame
    from kdjax.sweep.driver import run_study
    from kdjax.sweep.manifest import load_manifest
    from kdjax.sweep.plan import Planner

    if repeats < 1:
        raise ConfigError(f"--repeats: at least 1, got {repeats}")
    raw, _ = read_composed(manifest)
    raw.update(trainer=f"{__name__}:planted", executor={"kind": "local"})
    with contextlib.ExitStack() as stack:
        root = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        path = root / "manifest.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        m = load_manifest(path)
        truth = truths(m, effects["effects"])
        rows = []
        for r in range(repeats):
            workdir = root / f"study{r:03d}"
            workdir.mkdir(exist_ok=True)
            plant(Planner(m, workdir), effects, noise, r)
            with contextlib.redirect_stdout(io.StringIO()):
                run_study(path, workdir, progress=False, report=False)
            frame = effects_frame(workdir, n_boot=n_boot, seed=r)
            frame["repeat"] = r
            rows.append(frame)
    found = pd.concat(rows, ignore_index=True)
    return summarize(found, truth, alpha)


def summarize(found: Any, truth: dict[tuple[str, Any], float], alpha: float = 0.05) -> Any:
    """Per (axis, option) over the repeats (`found`: effects frames with a `repeat` column):
    the truth (vs the axis's truly best option), the mean estimate, its bias and the
    interval's coverage (both against the truth vs the option each study chose as best, the
    contrast it estimates), power (P[p < alpha]) and how often it was chosen best."""
    import pandas as pd

    found = found.assign(
        key=found["option"].map(option_key),
        is_best=found["verdict"].str.startswith("best option"),
    )
    chosen = {(r.repeat, r.axis): r.key for r in found[found["is_best"]].itertuples()}
    out = []
    for (axis, option), t in truth.items():
        sel = found[(found["axis"] == axis) & (found["key"] == option)]
        # The estimand of each study: this option against the option it chose as best.
        target = np.array(
            [t - truth.get((axis, chosen.get((r, axis))), 0.0) for r in sel["repeat"]]
        )
        is_best = sel["is_best"].to_numpy()
        est = sel["effect"].to_numpy(dtype=float)
        ok = ~np.isnan(est)
        lo, hi = sel["ci_low"].to_numpy(dtype=float), sel["ci_high"].to_numpy(dtype=float)
        has_ci = ~is_best & ~np.isnan(lo) & ~np.isnan(hi)  # the best's interval is [0, 0]
        covered = (lo - 1e-9 <= target) & (target <= hi + 1e-9)
        out.append({
            "axis": axis,
            "option": option if isinstance(option, str) else f"{option:g}",
            "truth": t,
            "estimate": est[ok].mean() if ok.any() else np.nan,
            "bias": (est - target)[ok].mean() if ok.any() else np.nan,
            "detected": (sel["p_value"] < alpha).mean() if len(sel) else np.nan,
            "coverage": covered[has_ci].mean() if has_ci.any() else np.nan,
            "chosen_best": is_best.mean() if len(sel) else np.nan,
            "studies": len(sel),
        })  # fmt: skip
    return pd.DataFrame(out)


def noise_from_ledger(workdir: str | Path) -> Noise:
    """Noise as a finished study's ledger shows it: test and validation sizes from its runs'
    results; seed_sd from the spread of the test metric over seeds of otherwise equal runs,
    less what the test examples add to it (under the planted model); rho from how often two
    runs on one dataset are both right on an example (`_rho`)."""
    from scipy.stats import multivariate_normal, norm

    from kdjax.sweep.ledger import Ledger

    path = Path(workdir) / "ledger.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"--workdir: no ledger at {path}")
    with Ledger(path) as ledger:
        rows = ledger.rows(status="done", kind=["distill", "baseline"])
    sizes: dict[str, list[int]] = {"test": [], "validation": []}
    groups: dict[str, list[float]] = {}
    for r in rows:
        result = json.loads(r["result_json"] or "{}")
        n = len((result.get("test_outcomes") or {}).get("values") or []) or (
            (result.get("data") or {}).get("examples") or {}
        ).get("test")
        if n:
            sizes["test"].append(n)
        nv = ((result.get("data") or {}).get("examples") or {}).get("validation")
        if nv:
            sizes["validation"].append(nv)
        cfg = json.loads(r["config_json"])
        cfg.pop("output_dir", None)
        cfg["train"].pop("seed", None)
        if r["test_metric"] is not None:
            groups.setdefault(_key(cfg), []).append(r["test_metric"])
    base = Noise()
    rho = _rho(rows) or base.rho
    test_n = int(np.median(sizes["test"])) if sizes["test"] else base.test_n
    val_n = int(np.median(sizes["validation"])) if sizes["validation"] else base.val_n
    spread = [(np.var(v, ddof=1), np.mean(v), len(v) - 1) for v in groups.values() if len(v) > 1]
    seed_sd = base.seed_sd
    if spread:
        dof = sum(d for *_, d in spread)
        var = sum(v * d for v, _, d in spread) / dof
        q = float(np.mean([m for _, m, _ in spread]))
        # What the test set adds to a run's score: examples' own noise, given their difficulty.
        c = float(norm.ppf(q))
        both = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([c, c])
        seed_sd = 100 * math.sqrt(max(var - (q - both) / test_n, 0.0))
    return Noise(seed_sd=round(seed_sd, 3), test_n=test_n, val_n=val_n, rho=rho)


def _rho(rows: list[dict[str, Any]], max_pairs: int = 30) -> float | None:
    """The example correlation that makes the planted model's share of examples two runs both
    get right equal the ledger's, median over up to `max_pairs` pairs of runs per dataset with
    0/1 test outcomes; None without such pairs."""
    from scipy.optimize import brentq
    from scipy.stats import multivariate_normal, norm

    by_dataset: dict[str, list[np.ndarray]] = {}
    for r in rows:
        values = (json.loads(r["result_json"] or "{}").get("test_outcomes") or {}).get("values")
        if values and set(values) <= {0, 1}:
            by_dataset.setdefault(r["dataset"], []).append(np.asarray(values))
    found = []
    for runs in by_dataset.values():
        pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :] if len(a) == len(b)]
        for a, b in pairs[:max_pairs]:
            c1, c2 = norm.ppf(np.clip([a.mean(), b.mean()], 1e-3, 1 - 1e-3))
            both = float((a & b).mean())

            def gap(rho: float, c1: float = c1, c2: float = c2, both: float = both) -> float:
                cov = [[1.0, rho], [rho, 1.0]]
                return multivariate_normal(mean=[0, 0], cov=cov).cdf([c1, c2]) - both

            lo, hi = gap(0.0), gap(0.999)
            if lo <= 0 <= hi:
                found.append(brentq(gap, 0.0, 0.999, xtol=1e-3))
    return round(float(np.median(found)), 3) if found else None
