"""Every writer of the comparison's tables and figures, on hand-made run records."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from scae import provenance
from scae.report import compare_plots as comparison_plots
from scae.report import stats
from scae.report import tables as report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERRORS = {  # (label size, arm) -> test errors of seeds 0, 1, ...
    (1000, "random"): [7.9, 7.5, 8.1, 7.7],
    (1000, "pretrained"): [7.1, 7.4, 7.0, 7.3],
    (1000, "frozen"): [9.0, 8.8, 9.1, 9.3],
    (10000, "random"): [2.3, 2.1, 2.2],
    (10000, "pretrained"): [2.2, 2.3, 2.1],
    (50000, "random"): [0.8],
    (50000, "pretrained"): [0.7],
}


@pytest.fixture
def rows() -> list[dict]:
    """Run records, deliberately out of order, with 5-epoch curves shared across seeds."""
    out = []
    for (size, arm), errs in ERRORS.items():
        for seed, e in enumerate(errs):
            curve = [[ep, e + 40.0 / ep ** 2 + 0.1 * seed] for ep in range(1, 6)]
            out.append({"dataset": "mnist", "label_size": size, "arm": arm, "seed": seed,
                        "epochs": 5, "steps": 50, "best_epoch": 5, "val_error": e + 0.1,
                        "test_error": e, "time_s": 1.5, "curve": curve})
    return out[::-1]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert not list(path.parent.glob("*.tmp*")), "temporary file left behind"


def test_runs_csv(rows, tmp_path):
    path = tmp_path / "runs.csv"
    report.write_runs_csv(rows, path)
    header, body = read_csv(path)
    assert header == list(report.RUN_COLUMNS)
    assert "curve" not in header
    assert len(body) == sum(map(len, ERRORS.values()))
    keys = [(int(r["label_size"]), r["arm"], int(r["seed"])) for r in body]
    order = {"random": 0, "pretrained": 1, "frozen": 2}
    assert keys == sorted(keys, key=lambda k: (k[0], order[k[1]], k[2]))
    assert keys[:5] == [(1000, "random", s) for s in range(4)] + [(1000, "pretrained", 0)]
    assert float(body[0]["test_error"]) == 7.9


def test_summary_csv_and_md(rows, tmp_path):
    csv_path, md_path = tmp_path / "summary.csv", tmp_path / "summary.md"
    report.write_summary(rows, "mnist", csv_path, md_path)
    header, body = read_csv(csv_path)
    assert header == list(report.SUMMARY_COLUMNS)
    assert len(body) == len(ERRORS)
    cell = {(int(r["label_size"]), r["arm"]): r for r in body}
    pre, rnd = ERRORS[1000, "pretrained"], ERRORS[1000, "random"]
    paired = scipy.stats.ttest_rel(pre, rnd)
    ci = paired.confidence_interval(0.95)
    welch = scipy.stats.ttest_ind(pre, rnd, equal_var=False).pvalue
    r = cell[1000, "pretrained"]
    assert int(r["n"]) == 4 and int(r["n_pairs"]) == 4
    assert float(r["mean_test_error"]) == pytest.approx(np.mean(pre), abs=1e-4)
    assert float(r["std_test_error"]) == pytest.approx(np.std(pre, ddof=1), abs=1e-4)
    assert float(r["diff_vs_random"]) == pytest.approx(np.mean(pre) - np.mean(rnd), abs=1e-4)
    assert float(r["ci_low"]) == pytest.approx(ci.low, rel=1e-5)
    assert float(r["ci_high"]) == pytest.approx(ci.high, rel=1e-5)
    assert float(r["p_value"]) == pytest.approx(paired.pvalue, rel=1e-4)
    assert float(r["df"]) == 3
    assert float(r["welch_p"]) == pytest.approx(welch, rel=1e-4)
    assert r["wilcoxon_p"] == ""  # 4 pairs: the signed-rank test cannot inform
    assert float(r["paper_test_error"]) == 7.23
    assert r["dataset"] == "MNIST" and r["labels"] == "1,000"
    assert cell[1000, "random"]["diff_vs_random"] == ""  # no difference of random from itself
    assert cell[1000, "frozen"]["paper_test_error"] == ""  # the paper has no frozen arm
    assert cell[50000, "random"]["std_test_error"] == ""  # one seed: no spread
    assert cell[50000, "pretrained"]["p_value"] == ""

    md = md_path.read_text()
    assert md.startswith("# MNIST: ")
    assert "| labels |" in md and "| 1,000 |" in md and "| 50,000 |" in md
    assert "7.20 ± 0.18 (4)" in md  # mean ± sample std (n) of pretrained at 1k
    assert f"| 1,000 | pretrained − random | 4 | −0.60 [{report.fmt_signed(ci.low)}, " in md
    assert report.fmt_p(paired.pvalue) in md and report.fmt_p(welch) in md
    assert "n/a (4 pairs)" in md and "cannot reach p < 0.05" in md
    assert "7.63" in md and "7.23" in md  # the paper's figures beside
    # ... and how far ours is from them: 1k random 7.80 vs 7.63, CAE 7.20 vs 7.23.
    assert "| 7.63 | 7.23 | +0.17, −0.03 |" in md
    assert "| 0.79 | 0.71 | +0.01, −0.01 |" in md
    assert "paired by seed" in md and "Welch" in md and "Wilcoxon" in md
    assert "percent" in md and "standard deviation" in md
    # Welch alone would call 1k significant; the paired test, which the verdict uses, does not.
    assert welch < 0.05 < paired.pvalue
    assert ("1,000 labels: no significant difference between pretraining and random "
            "initialisation (−0.60 points, about 60 of the 10,000 test images; paired over "
            "4 seeds: 95% CI") in md
    # A difference of 0.00 points on MNIST is negligible, whatever p says.
    assert "10,000 labels: a negligible difference" in md
    assert "50,000 labels:" in md and "no paired test (needs at least 2 seeds" in md


def test_verdict_follows_the_paired_test(tmp_path):
    # Seed-to-seed spread swamps the unpaired test, but every seed gains about 0.3 points.
    rnd = [5.0, 6.0, 7.0, 8.0, 9.0]
    pre = [4.6, 5.8, 6.7, 7.6, 8.8]
    rows = [{"dataset": "mnist", "label_size": 1000, "arm": arm, "seed": s, "test_error": e}
            for arm, errs in (("random", rnd), ("pretrained", pre)) for s, e in enumerate(errs)]
    assert scipy.stats.ttest_ind(pre, rnd, equal_var=False).pvalue > 0.5
    assert scipy.stats.ttest_rel(pre, rnd).pvalue < 0.01
    md = report.summary_markdown(rows, "mnist")
    assert "1,000 labels: pretraining helped significantly" in md


def test_summary_says_when_pretraining_hurt(tmp_path):
    rows = [{"dataset": "cifar10", "label_size": 100, "arm": arm, "seed": s, "test_error": e}
            for arm, errs in (("random", [50.0, 51.0, 50.5]), ("pretrained", [60.0, 61.0, 60.2]))
            for s, e in enumerate(errs)]
    report.write_summary(rows, "cifar10", tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "100 labels: pretraining hurt significantly" in md
    assert "paper random" not in md  # no paper column at a size the paper lacks


def test_numbers_keep_their_sign_and_small_values():
    assert report.fmt_signed(-0.004) == "−0.004"
    assert report.fmt_signed(0.004) == "+0.004"
    assert report.fmt_signed(-0.0004) == "−0.0004"
    assert report.fmt_signed(-0.005) == "−0.01"  # rounds at the precision shown, sign kept
    assert report.fmt_signed(-1.234) == "−1.23" and report.fmt_signed(0.85) == "+0.85"
    for zero in (0.0, -0.0, 4e-16, -3e-9):
        assert report.fmt_signed(zero) == "0.00"
    assert report.fmt_signed(float("nan")) == "n/a"
    assert report.fmt_p(0.0001234) == "1.2e-04"
    assert report.fmt_p(0.01234) == "0.0123"
    assert report.fmt_p(0.5) == "0.500"
    assert report.fmt_p(0.00320) == "0.00320"
    for tiny in (9.9e-7, 1e-12, 0.0):
        assert report.fmt_p(tiny) == "< 1e-6"
    assert report.fmt_p(float("nan")) == "n/a"


def test_tiny_differences_and_p_values_in_the_tables(tmp_path):
    # Seeds whose differences are -0.004 on average, and a gap so steady that p < 1e-6.
    rows = [{"dataset": "mnist", "label_size": size, "arm": arm, "seed": s, "test_error": e}
            for size, arm, errs in (
                (1000, "random", [5.0, 6.0, 7.0]), (1000, "pretrained", [4.99, 6.0, 6.998]),
                (10000, "random", [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
                (10000, "pretrained", [1.0, 2.0 + 1e-5, 3.0, 4.0 - 1e-5, 5.0, 6.0 + 2e-5]))
            for s, e in enumerate(errs)]
    report.write_summary(rows, "mnist", tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "| 1,000 | pretrained − random | 3 | −0.004 [" in md
    assert "+0.00" not in md and "−0.00 " not in md and "| 0 |" not in md
    assert "p < 1e-6" in md  # the 10k verdict
    _, body = read_csv(tmp_path / "s.csv")
    p = float(next(r for r in body if r["label_size"] == "10000" and r["arm"] == "pretrained")
              ["p_value"])
    assert 0 < p < 1e-6


def test_whole_pool_cells_are_named_and_explained(tmp_path):
    rows = [{"dataset": "cifar10", "label_size": size, "arm": arm, "seed": s,
             "test_error": e + s, "pool_size": 45000}
            for size in (1000, 45000) for arm, e in (("random", 40.0), ("pretrained", 39.0))
            for s in range(3)]
    md = report.summary_markdown(rows, "cifar10")
    assert "| all (45,000) |" in md and "| 1,000 |" in md and "all (1,000)" not in md
    assert "seeds then differ only in initialisation and order" in md
    assert "Refit" not in md
    md = report.summary_markdown([dict(r, refit_full=r["label_size"] == 45000) for r in rows],
                                 "cifar10")
    assert "no selection on validation in the refit" in md
    report.write_summary(rows, "cifar10", tmp_path / "s.csv", tmp_path / "s.md")
    _, body = read_csv(tmp_path / "s.csv")
    assert {r["labels"] for r in body} == {"1,000", "all (45,000)"}
    # Records without pool_size: every seed drawing the same subset means the whole pool.
    legacy = [{k: v for k, v in r.items() if k != "pool_size"}
              | {"subset": "same" if r["label_size"] == 45000 else f"s{r['seed']}"}
              for r in rows]
    assert [report.label_text(s, legacy) for s in (1000, 45000)] == ["1,000", "all (45,000)"]
    one_seed = [r for r in legacy if r["seed"] == 0]
    assert report.label_text(45000, one_seed) == "45,000"  # one seed cannot tell


@pytest.mark.parametrize("stack_of,expected", [
    (lambda seed: 0, "One stack shared by every seed (pretraining variance not included)"),
    (lambda seed: seed, "One stack per seed"),
    (lambda seed: seed // 2, "2 stacks over 4 seeds"),
])
def test_stack_statement(stack_of, expected):
    rows = [{"dataset": "mnist", "label_size": 100, "arm": arm, "seed": s, "test_error": 5.0 + s,
             "stack_seed": None if arm == "random" else stack_of(s)}
            for arm in ("random", "pretrained", "frozen") for s in range(4)]
    assert expected in report.summary_markdown(rows, "mnist")
    legacy = [{k: v for k, v in r.items() if k != "stack_seed"} for r in rows]
    assert report.stack_statement(legacy) == ""  # records that do not say: no claim


def test_reconstruction_error_over_stacks_in_the_summary():
    rows = [{"dataset": "mnist", "label_size": 100, "arm": "random", "seed": 0, "test_error": 5.0}]
    stacks = [[{"layer": 1, "epoch": 1, "val_mse": 0.5}, {"layer": 1, "epoch": 2, "val_mse": v}]
              for v in (0.010, 0.012, 0.014)]
    md = report.summary_markdown(rows, "mnist", stacks)
    assert "(mean ± std over 3 stacks): layer 1 0.012 ± 0.002." in md
    assert "(one stack): layer 1 0.01." in report.summary_markdown(rows, "mnist", stacks[:1])


def test_titles_and_paper_columns_follow_the_test_set_identity(rows, tmp_path):
    other = provenance.DataIdentity("idx:/data/kmnist", None, False,
                                    "idx:/data/kmnist: not a known test set; no paper figures")
    report.write_summary(rows, other, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert md.startswith("# idx:/data/kmnist: CAE-pretrained CNN")
    assert "MNIST" not in md and "paper" not in md.lower().replace("no paper figures", "")
    assert "7.63" not in md and "7.23" not in md
    _, body = read_csv(tmp_path / "s.csv")
    assert {r["paper_test_error"] for r in body} == {""}
    assert {r["dataset"] for r in body} == {"idx:/data/kmnist"}
    # The identity can come with the records instead; a record from a config named "mnist"
    # run on other data is then not given the paper's figures.
    tagged = [dict(r, **other.to_record()) for r in rows]
    assert report.summary_markdown(tagged, "mnist") == report.summary_markdown(rows, other)
    jpeg = provenance.DataIdentity("CIFAR-10 (JPEG copy)", "cifar10", False, "JPEG copy, not exact")
    md = report.summary_markdown([dict(r, dataset="cifar10") for r in rows], jpeg)
    assert md.startswith("# CIFAR-10 (JPEG copy): ") and "55.52" in md
    assert "not pixel for pixel" in md
    with pytest.raises(ValueError, match="several test sets"):
        report.summary_markdown(tagged[:3] + [dict(r, **jpeg.to_record()) for r in rows[3:]])


def test_figures(rows, tmp_path):
    comparison_plots.error_vs_labels_figure(rows, "mnist", tmp_path / "error_vs_labels.png")
    comparison_plots.curves_figure(rows, tmp_path / "curves.png")
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    raw = rng.normal(size=(200, 28 * 28)) + labels[:, None] * 0.05
    feats = rng.normal(size=(200, 80)) + labels[:, None] * 0.3
    comparison_plots.embedding_figure(raw, feats, labels, [f"digit {k}" for k in range(10)],
                            tmp_path / "embedding.png")
    before = rng.normal(size=(20, 5, 5, 1))
    comparison_plots.filters_before_after_figure(
        before, {"pretrained": before + 0.1 * rng.normal(size=before.shape),
                 "random": rng.normal(size=before.shape)}, tmp_path / "filters.png")
    for name in ("error_vs_labels", "curves", "embedding", "filters"):
        assert_png(tmp_path / f"{name}.png")


def test_figures_without_paper_figures_or_runs(tmp_path):
    rows = [{"dataset": "folder", "label_size": 30, "arm": "random", "seed": 0,
             "test_error": 40.0, "curve": [[1, 60.0], [2, 45.0]]}]
    comparison_plots.error_vs_labels_figure(rows, "folder", tmp_path / "a.png")
    comparison_plots.curves_figure(rows, tmp_path / "b.png")
    comparison_plots.error_vs_labels_figure([], "folder", tmp_path / "c.png")
    comparison_plots.curves_figure([], tmp_path / "d.png")
    report.write_summary([], "folder", tmp_path / "e.csv", tmp_path / "e.md")
    for name in "abcd":
        assert_png(tmp_path / f"{name}.png")
    assert read_csv(tmp_path / "e.csv") == (list(report.SUMMARY_COLUMNS), [])
    assert "No finished runs" in (tmp_path / "e.md").read_text()


def test_pca_explained_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)) * np.array([10.0, 3.0, 1.0, 1.0, 1.0])
    proj, ratio = comparison_plots.pca_2d(x)
    ev = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    assert ratio == pytest.approx(ev[:2] / ev.sum(), rel=1e-6)
    assert proj.shape == (300, 2)
    assert np.allclose(proj.mean(0), 0, atol=1e-9)


def test_pca_of_large_inputs_matches_exact_svd():
    rng = np.random.default_rng(2)
    scales = np.r_[8.0, 4.0, np.linspace(1.5, 0.5, 118)]
    x = rng.normal(size=(400, 120)) * scales + 3.0
    proj, ratio = comparison_plots.pca_2d(x)
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    assert ratio == pytest.approx(s[:2] ** 2 / (s ** 2).sum(), rel=1e-6)
    for k in range(2):  # components are defined up to sign
        assert abs(np.corrcoef(proj[:, k], u[:, k])[0, 1]) == pytest.approx(1.0, abs=1e-6)


def test_runs_at_a_lowered_learning_rate_are_listed(rows, tmp_path):
    rows = [dict(r) for r in rows]
    rows[3]["lr_scale"] = 0.5
    report.write_runs_csv(rows, tmp_path / "runs.csv")
    _, body = read_csv(tmp_path / "runs.csv")
    assert sorted(float(r["lr_scale"]) for r in body)[:2] == [0.5, 1.0]
    report.write_summary(rows, "mnist", tmp_path / "s.csv", tmp_path / "s.md")
    text = (tmp_path / "s.md").read_text()
    r = rows[3]
    assert "1 run(s) finished at a lowered learning rate" in text
    assert f"{r['arm']} at {r['label_size']:,} labels seed {r['seed']} (x0.5)" in text
    report.write_summary([dict(r, lr_scale=1.0) for r in rows], "mnist", tmp_path / "s.csv",
                         tmp_path / "s.md")
    assert "lowered learning rate" not in (tmp_path / "s.md").read_text()


# ---------------------------------------------------------------------------------------------
# Verdicts by Holm-adjusted p, in test images, against the paper's difference as transcribed


def _rows(dataset, errors):
    return [{"dataset": dataset, "label_size": size, "arm": arm, "seed": s, "test_error": e}
            for (size, arm), errs in errors.items() for s, e in enumerate(errs)]


def test_verdicts_use_holm_and_weigh_the_paper_against_our_interval():
    rnd = [45.0, 46.0, 44.5, 45.5, 46.5]
    errors = {(1000, "random"): rnd,
              # raw p about 0.03 at 1k: significant alone, not after Holm over three tests
              (1000, "pretrained"): [a - d for a, d in zip(rnd, [0.2, 1.5, 0.4, 1.2, 0.9])],
              (10000, "random"): [30.0, 29.5, 29.8, 30.2, 29.9],
              (10000, "pretrained"): [30.1, 29.3, 29.9, 30.0, 30.0],
              (50000, "random"): [23.0, 23.2, 22.9, 23.1, 23.3],
              (50000, "pretrained"): [22.8, 23.4, 22.9, 23.0, 23.1]}
    rows = _rows("cifar10", errors)
    (d1, d10, d50) = stats.paired_tests(rows)
    assert d1.p < 0.05 < d1.p_holm
    lines = report.verdict_lines(rows)
    one = lines[0]
    assert one.startswith("- 1,000 labels: no significant difference")
    assert f"Holm-adjusted p = {report.fmt_p(d1.p_holm)}" in one
    assert f"about {abs(d1.diff) * 100:,.0f} of the 10,000 test images" in one
    # The paper's 1k difference (−3.22) lies outside our interval, and it is the corroborated one.
    assert "The paper's difference: −3.22, outside our 95% CI" in one
    assert stats.PAPER_CAVEAT in one and "Kohlbrenner et al." in one
    md = report.summary_markdown(rows)
    assert "| paper random† | paper CAE† |" in md and "p (Holm)" in md
    assert "† Paper: Masci et al. (2011)" in md and stats.PAPER_CAVEAT in md
    assert "Kohlbrenner" in md
    row = [c.strip() for c in next(x for x in md.splitlines()
                                   if x.startswith("| 1,000 | pretrained − random")).split("|")]
    assert report.fmt_p(d1.p_holm) in row and "−3.22: no" in row
    assert report.fmt_signed(d1.diff * 100, 0) in row  # the difference in test images
    csv_rows = list(csv.DictReader(io.StringIO(report.summary_texts(rows)[0])))
    pre1 = next(r for r in csv_rows if r["label_size"] == "1000" and r["arm"] == "pretrained")
    assert float(pre1["p_holm"]) == pytest.approx(d1.p_holm, rel=1e-5)
    assert pre1["paper_diff_in_ci"] == "False"
    assert float(pre1["diff_test_images"]) == pytest.approx(d1.diff * 100, rel=1e-5)


def test_a_tiny_mnist_difference_is_negligible_whatever_p_says():
    rnd = [0.92, 0.95, 0.90, 0.93, 0.91, 0.94]
    rows = _rows("mnist", {(50000, "random"): rnd,
                           (50000, "pretrained"): [x - 0.06 + 0.001 * (i % 2)
                                                   for i, x in enumerate(rnd)]})
    (d,) = stats.paired_tests(rows)
    assert d.p_holm < 0.001 and d.significant
    (line, *_) = report.verdict_lines(rows)
    assert "a negligible difference" in line and "significant" not in line
    assert "about 6 of the 10,000 test images" in line


# --- runs made with the failure rule off (finetune.failure_rule = 'none') -------------------


def _ruled_rows(rule: str | None) -> list[dict]:
    """Two seeds of two arms at 100 labels, seed 0 of each at chance (90% of ten classes):
    records as scae.study.finetune writes them under ``rule``; None: records made before the
    failure rule existed (no failure_rule, no failed)."""
    out = []
    for arm in ("random", "pretrained"):
        for seed, error in ((0, 90.0), (1, 30.0)):
            r = {"dataset": "mnist", "label_size": 100, "arm": arm, "seed": seed,
                 "val_error": error, "test_error": error, "failure_hit": seed == 0}
            if rule is not None:
                r["failure_rule"] = rule
            if rule not in (None, "none"):
                r["failed"] = seed == 0
            out.append(r)
    return out


def test_runs_with_the_rule_off_are_said_to_be_so_not_records_made_before_it(tmp_path):
    rows = _ruled_rows("none")
    line = report.failure_line(rows)
    assert "records made before it" not in line
    assert "The failure rule was off (finetune.failure_rule = none)" in line
    # Flagged post hoc, so that a run at chance is never mixed silently into a mean, and the
    # line says so: no rule ran, so no run "hit" one.
    assert "a run counts as failed, post hoc, when its selected error is within 2" in line
    assert line.startswith("Runs that failed, per arm: random init 1 of 2; CAE pretrained 1 "
                           "of 2.")
    md_path = tmp_path / "summary.md"
    report.write_summary(rows, "mnist", tmp_path / "summary.csv", md_path)
    md = md_path.read_text()
    assert line in md and "records made before it" not in md
    assert "(never trained; see above how a run counts as failed)" in md
    # runs.csv's failed is what the summary counts: the post-hoc verdict.
    report.write_runs_csv(rows, tmp_path / "runs.csv")
    _, body = read_csv(tmp_path / "runs.csv")
    assert [(r["arm"], r["seed"], r["failed"]) for r in body] == [
        ("random", "0", "True"), ("random", "1", "False"),
        ("pretrained", "0", "True"), ("pretrained", "1", "False")]


def test_records_made_before_the_rule_keep_their_wording():
    line = report.failure_line(_ruled_rows(None))
    assert ("Runs that hit the failure rule, per arm: random init 1 of 2; CAE pretrained 1 of "
            "2. No failure rule ran while these runs trained (records made before it): a run "
            "counts as failed, post hoc, when its selected error is within 2 points of "
            "chance.") == line
    assert [report.ruled_by(r) for r in _ruled_rows(None)] == ["legacy"] * 4


def test_records_of_the_rule_off_beside_others_are_counted_apart():
    off, legacy, marked = _ruled_rows("none"), _ruled_rows(None), _ruled_rows("mark")
    line = report.failure_line(marked[:2] + off[2:])
    assert ("Of the 4 records, 2 were made under a failure rule and 2 with the rule off "
            "(finetune.failure_rule = none); those no rule judged count as failed, post hoc"
            in line)
    line = report.failure_line(off[:2] + legacy[2:])
    assert ("Of the 4 records, 2 with the rule off (finetune.failure_rule = none) and 2 before "
            "the rule existed;" in line)
    assert "records made before it" not in line
    assert [report.ruled_by(r) for r in (off[0], legacy[0], marked[0])] == ["off", "legacy",
                                                                            "rule"]
