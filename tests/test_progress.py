"""Progress bars for long, silent work: shown on stderr when asked (or on a terminal), never on stdout, and the items
pass through unchanged; off when HSAKD_PROGRESS=0."""
from __future__ import annotations

from hsakd_ray.progress_bars import byte_bar, progress


def test_bar_on_stderr_counts_every_item_and_leaves_stdout_alone(monkeypatch, capsys):
    monkeypatch.setenv("HSAKD_PROGRESS", "1")
    assert list(progress(range(50), "decoding images", total=50, unit="img")) == list(range(50))
    with byte_bar("fetching checkpoint", total=2048) as bar:
        bar.update(1024)
        bar.update(1024)
    out, err = capsys.readouterr()
    assert out == ""
    assert "decoding images" in err and "50/50" in err and "img" in err
    assert "fetching checkpoint" in err and "2.05k/2.05k" in err


def test_no_bar_when_switched_off(monkeypatch, capsys):
    monkeypatch.setenv("HSAKD_PROGRESS", "0")
    assert list(progress(iter("abc"), "x")) == ["a", "b", "c"]
    with byte_bar("y", total=3) as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")


def test_importing_a_checkpoint_shows_its_steps(monkeypatch, capsys, tmp_path):
    import torch
    from test_import_command import marked_state

    from hsakd_ray.engine.importers import import_checkpoint

    monkeypatch.setenv("HSAKD_PROGRESS", "1")
    state, _ = marked_state("wrn_16_2", backbone_only=True)
    torch.save({"state_dict": state}, tmp_path / "b.pth")
    import_checkpoint(tmp_path / "b.pth", "wrn_16_2", tmp_path / "backbone")
    out, err = capsys.readouterr()
    assert out == "" and "importing b.pth (read, convert, write)" in err and "3/3" in err
