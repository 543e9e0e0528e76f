"""Tables and the plot, from a real run's results."""
import matplotlib.image
import pytest

from gphint import report
from gphint.experiment import RunConfig, results_document, run_one


@pytest.fixture(scope="module")
def doc():
    cfg = RunConfig(workload="mixed", guests=2, guest_mem_bytes=16 << 20, duration_s=0.6, seed=5,
                    probe_bytes=2 << 20, probe_timeout_s=0.5)
    recs = [run_one(cfg, "cmma"), {"strategy": "balloon:interval=0.1", "strategy_name": "balloon",
                                   "error": "balloon is unavailable: a test said so"}]
    return results_document(cfg, recs)


def test_text_table_has_a_row_per_strategy_with_its_numbers(doc):
    text = report.text_table(doc["results"])
    lines = text.splitlines()
    assert lines[0].startswith("strategy") and "integrity errors" in lines[0]
    cmma = next(l for l in lines if l.startswith("cmma"))
    rec = doc["results"][0]
    assert "%.1f" % (rec["rss_peak_bytes"] / 2 ** 20) in cmma
    assert cmma.split()[-1] == "0"                                # integrity errors
    err = next(l for l in lines if l.startswith("balloon"))
    assert "error: balloon is unavailable: a test said so" in err


def test_markdown_table(doc):
    md = report.markdown_table(doc["results"]).splitlines()
    assert md[0].startswith("| strategy |") and md[1].startswith("|---")
    assert len(md) == 4 and md[2].startswith("| cmma |")
    assert all(l.count("|") == md[0].count("|") for l in md)


def test_summary_names_mode_and_overcommit(doc):
    s = report.summary(doc)
    assert s.startswith("proactive mode, 2 x 16.0 MiB guests, workload mixed")
    d = dict(doc, config=dict(doc["config"], host_mem_bytes=16 << 20, mode="pressure"))
    touched = doc["results"][0]["guest_touched_bytes"]
    assert "host budget 16.0 MiB (2.0x guest memory, %.1fx what the guests touched)" % (
        touched / (16 << 20)) in report.summary(d)


def test_plot_renders(doc, tmp_path):
    path = report.plot(doc, str(tmp_path / "sub" / "p.png"))
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05          # not a blank canvas
