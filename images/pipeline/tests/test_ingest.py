"""ingest: CSV/Parquet files and prefixes of parts -> the run's snapshot and manifest, or a one-line refusal."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privacy_pipeline import cli, storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import ingest, synth

LABELS = ["no_privacy_intent", "data_deletion", "opt_out"]


@pytest.fixture()
def config() -> PipelineConfig:
    return PipelineConfig()


def messages(rows: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"{i:06d}" for i in range(start, start + rows)],
            "label": [LABELS[i % len(LABELS)] for i in range(start, start + rows)],
            "text": [f"message number {i}" for i in range(start, start + rows)],
        }
    )


def with_wide_embeddings(frame: pd.DataFrame, width: int, seed: int = 0) -> pd.DataFrame:
    matrix = np.random.default_rng(seed).normal(size=(len(frame), width)).astype(np.float32)
    return pd.concat([frame, pd.DataFrame(matrix, columns=tabular.wide_embedding_names(width))], axis=1)


def write_csv(path: Path, frame: pd.DataFrame) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def write_parquet(path: Path, frame: pd.DataFrame) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return str(path)


def read_snapshot(run_uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(RunLayout(run_uri).snapshot)))


def read_manifest(run_uri: str) -> dict:
    return storage.read_json(RunLayout(run_uri).ingest_manifest)


def assert_nothing_written(run_dir: Path) -> None:
    assert not (run_dir / "ingest").exists()


# --- single files -------------------------------------------------------------


def test_a_csv_file_becomes_a_snapshot_with_string_ids_and_verbatim_text(tmp_path: Path, config) -> None:
    frame = messages(9)
    frame.loc[3, "text"] = "NA"  # a real message, not a missing value
    source = write_csv(tmp_path / "raw.csv", frame)
    run_uri = str(tmp_path / "run")

    result = ingest.run(config=config, source=source, run_uri=run_uri)

    snapshot = read_snapshot(run_uri)
    assert list(snapshot.columns) == ["id", "label", "text"]
    assert snapshot["id"].tolist()[:2] == ["000000", "000001"]
    assert snapshot.loc[3, "text"] == "NA"
    manifest = read_manifest(run_uri)
    assert manifest["rows"] == 9 and manifest["has_text"] and not manifest["has_embeddings"]
    assert manifest["parts"] == [
        {"uri": source, "size": Path(source).stat().st_size, "generation": Path(source).stat().st_mtime_ns, "rows": 9}
    ]
    assert result.xcom["rows"] == 9 and result.xcom["parts"] == 1
    assert result.xcom["content_sha256"] == manifest["content_sha256"]
    assert result.commit_uri == RunLayout(run_uri).result("ingest")
    assert "9 rows" in result.summary


def test_a_parquet_list_embedding_column_is_stored_as_float32_lists(tmp_path: Path, config) -> None:
    frame = messages(5).drop(columns="text")
    frame["embedding"] = [np.arange(584, dtype=np.float64) + i for i in range(5)]
    source = write_parquet(tmp_path / "raw.parquet", frame)
    run_uri = str(tmp_path / "run")

    ingest.run(config=config, source=source, run_uri=run_uri)

    table = pq.read_table(RunLayout(run_uri).snapshot)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.column_names == ["id", "label", "embedding"]
    assert table.column("embedding")[2].as_py()[:2] == [2.0, 3.0]
    manifest = read_manifest(run_uri)
    assert manifest["has_embeddings"] and not manifest["has_text"] and manifest["embedding_dim"] == 584


@pytest.mark.parametrize("width", [583, 584, 585])
def test_wide_embedding_columns_are_packed_whatever_their_count(tmp_path: Path, config, width: int) -> None:
    frame = with_wide_embeddings(messages(4), width)
    source = write_csv(tmp_path / "raw.csv", frame)
    run_uri = str(tmp_path / "run")

    ingest.run(config=config, source=source, run_uri=run_uri)

    snapshot = read_snapshot(run_uri)
    assert list(snapshot.columns) == ["id", "label", "text", "embedding"]
    assert {len(e) for e in snapshot["embedding"]} == {width}
    np.testing.assert_allclose(snapshot.loc[1, "embedding"], frame.iloc[1, 3:].to_numpy(dtype=np.float32), rtol=1e-6)
    assert read_manifest(run_uri)["embedding_dim"] == width


def test_non_numeric_embedding_cells_become_nan_and_are_counted(tmp_path: Path, config) -> None:
    frame = with_wide_embeddings(messages(4), 584).astype({"emb_007": object})
    frame.loc[2, "emb_007"] = "oops"
    source = write_csv(tmp_path / "raw.csv", frame)
    run_uri = str(tmp_path / "run")

    ingest.run(config=config, source=source, run_uri=run_uri)

    snapshot = read_snapshot(run_uri)
    assert np.isnan(snapshot.loc[2, "embedding"][7])
    assert np.isfinite(snapshot.loc[1, "embedding"]).all()
    assert read_manifest(run_uri)["non_numeric_embedding_cells"] == 1


def test_a_utf8_bom_is_stripped_from_the_header(tmp_path: Path, config) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,label,text\r\n1,opt_out,stop emailing me\r\n2,no_privacy_intent,hi\r\n")
    run_uri = str(tmp_path / "run")

    ingest.run(config=config, source=str(path), run_uri=run_uri)

    snapshot = read_snapshot(run_uri)
    assert list(snapshot.columns) == ["id", "label", "text"]
    assert snapshot["id"].tolist() == ["1", "2"]
    assert read_manifest(run_uri)["ids_derived_for"] == []


def test_without_an_id_column_ids_are_derived_and_the_manifest_says_so(tmp_path: Path, config) -> None:
    source = write_csv(tmp_path / "part-0007.csv", messages(3).drop(columns="id"))
    run_uri = str(tmp_path / "run")

    ingest.run(config=config, source=source, run_uri=run_uri)

    assert read_snapshot(run_uri)["id"].tolist() == ["part-0007-0", "part-0007-1", "part-0007-2"]
    manifest = read_manifest(run_uri)
    assert manifest["ids_derived_for"] == [source]
    assert "<part file stem>-<row number>" in manifest["ids_note"]


def test_the_content_hash_depends_on_content_only(tmp_path: Path, config) -> None:
    frame = messages(20)
    csv_source = write_csv(tmp_path / "a" / "raw.csv", frame)
    parquet_source = write_parquet(tmp_path / "b" / "raw.parquet", frame)

    first = ingest.run(config=config, source=csv_source, run_uri=str(tmp_path / "run1"))
    again = ingest.run(config=config, source=csv_source, run_uri=str(tmp_path / "run2"))
    as_parquet = ingest.run(config=config, source=parquet_source, run_uri=str(tmp_path / "run3"))
    frame.loc[4, "label"] = "opt_out" if frame.loc[4, "label"] != "opt_out" else "data_deletion"
    changed = ingest.run(
        config=config, source=write_csv(tmp_path / "c" / "raw.csv", frame), run_uri=str(tmp_path / "run4")
    )

    assert first.xcom["content_sha256"] == again.xcom["content_sha256"] == as_parquet.xcom["content_sha256"]
    assert changed.xcom["content_sha256"] != first.xcom["content_sha256"]


# --- prefixes of parts ----------------------------------------------------------


def test_a_prefix_reads_every_part_file_and_skips_markers_and_other_files(tmp_path: Path, config) -> None:
    parts = tmp_path / "export"
    write_csv(parts / "part-0000.csv", messages(3, start=0))
    (parts / "part-0001.csv.gz").write_bytes(gzip.compress(messages(4, start=3).to_csv(index=False).encode()))
    write_parquet(parts / "part-0002.parquet", messages(5, start=7))
    (parts / "_SUCCESS").write_bytes(b"")
    (parts / ".part-0003.csv.crc").write_bytes(b"\x00\x01")
    (parts / "README.txt").write_text("not data")
    write_csv(parts / "_temporary" / "0" / "part-0009.csv", messages(50, start=100))
    run_uri = str(tmp_path / "run")

    result = ingest.run(config=config, source=str(parts), run_uri=run_uri)

    manifest = read_manifest(run_uri)
    assert [Path(p["uri"]).name for p in manifest["parts"]] == [
        "part-0000.csv",
        "part-0001.csv.gz",
        "part-0002.parquet",
    ]
    assert [p["rows"] for p in manifest["parts"]] == [3, 4, 5]
    assert read_snapshot(run_uri)["id"].tolist() == [f"{i:06d}" for i in range(12)]
    assert result.xcom["parts"] == 3 and result.xcom["rows"] == 12


def test_a_prefix_without_part_files_is_refused_naming_it(tmp_path: Path, config) -> None:
    parts = tmp_path / "export"
    parts.mkdir()
    (parts / "_SUCCESS").write_bytes(b"")
    (parts / "notes.json").write_text("{}")

    with pytest.raises(StageError, match=rf"^ingest: no CSV or Parquet part files under {parts} \(found 2 other"):
        ingest.run(config=config, source=str(parts), run_uri=str(tmp_path / "run"))
    with pytest.raises(StageError, match=r"does not exist"):
        ingest.run(config=config, source=str(tmp_path / "nowhere"), run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


def test_parts_with_different_columns_are_refused(tmp_path: Path, config) -> None:
    parts = tmp_path / "export"
    write_csv(parts / "part-0000.csv", messages(3))
    write_csv(parts / "part-0001.csv", with_wide_embeddings(messages(3).drop(columns="text"), 584))

    with pytest.raises(StageError, match=r"part-0001\.csv has embeddings but .*part-0000\.csv has text"):
        ingest.run(config=config, source=str(parts), run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


# --- files ingest cannot read ---------------------------------------------------------


def test_a_missing_label_column_is_refused_listing_the_columns(tmp_path: Path, config) -> None:
    source = write_csv(tmp_path / "raw.csv", messages(3).drop(columns="label"))

    with pytest.raises(StageError) as failure:
        ingest.run(config=config, source=source, run_uri=str(tmp_path / "run"))
    assert str(failure.value) == f"ingest: {source} has no 'label' column (columns: id, text)"
    assert_nothing_written(tmp_path / "run")


def test_a_semicolon_delimited_csv_is_refused_with_a_hint(tmp_path: Path, config) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("id;label;text\n1;opt_out;stop emails\n2;no_privacy_intent;hello\n")

    with pytest.raises(StageError, match=r"raw\.csv parses to a single column \('id;label;text'\); it looks ';'-delim"):
        ingest.run(config=config, source=str(path), run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


def test_a_csv_that_is_not_utf8_is_refused_naming_the_line(tmp_path: Path, config) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,label,text\n1,opt_out,ok\n2,opt_out,arrêtez les e-mails\n".encode("latin-1"))

    with pytest.raises(StageError, match=r"latin1\.csv is not UTF-8 text \(byte \d+, line 3"):
        ingest.run(config=config, source=str(path), run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("name", ["empty.csv", "empty.parquet"])
def test_an_empty_file_is_refused(tmp_path: Path, config, name: str) -> None:
    (tmp_path / name).write_bytes(b"")

    with pytest.raises(StageError, match=rf"^ingest: {tmp_path / name} is empty \(0 bytes\)$"):
        ingest.run(config=config, source=str(tmp_path / name), run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


def test_a_header_only_source_has_no_rows_to_snapshot(tmp_path: Path, config) -> None:
    (tmp_path / "raw.csv").write_text("id,label,text\n")

    with pytest.raises(StageError, match=r"has no data rows \(1 part file\(s\), all header-only\)"):
        ingest.run(config=config, source=str(tmp_path / "raw.csv"), run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


def test_a_truncated_parquet_is_refused_and_an_existing_snapshot_stays(tmp_path: Path, config) -> None:
    good = write_parquet(tmp_path / "good.parquet", messages(6))
    run_uri = str(tmp_path / "run")
    ingest.run(config=config, source=good, run_uri=run_uri)
    before = Path(RunLayout(run_uri).snapshot).read_bytes(), Path(RunLayout(run_uri).ingest_manifest).read_bytes()
    truncated = tmp_path / "bad.parquet"
    truncated.write_bytes(Path(good).read_bytes()[:-40])

    with pytest.raises(StageError, match=rf"^ingest: {truncated} is not a readable Parquet file; is it truncated"):
        ingest.run(config=config, source=str(truncated), run_uri=run_uri)
    after = Path(RunLayout(run_uri).snapshot).read_bytes(), Path(RunLayout(run_uri).ingest_manifest).read_bytes()
    assert after == before


def test_a_part_over_max_source_bytes_is_refused(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "raw.csv", messages(50))
    small = PipelineConfig.model_validate({"ingest": {"max_source_bytes": 100}})

    with pytest.raises(StageError, match=r"raw\.csv is [\d,]+ bytes, over ingest\.max_source_bytes \(100\)"):
        ingest.run(config=small, source=source, run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")
    ingest.run(config=PipelineConfig(), source=source, run_uri=str(tmp_path / "run"))


def test_wide_embedding_columns_with_a_gap_are_refused(tmp_path: Path, config) -> None:
    source = write_csv(tmp_path / "raw.csv", with_wide_embeddings(messages(3), 584).drop(columns="emb_100"))

    with pytest.raises(StageError, match=r"embedding columns emb_000\.\.emb_583 but no single emb_100"):
        ingest.run(config=config, source=source, run_uri=str(tmp_path / "run"))
    assert_nothing_written(tmp_path / "run")


def test_the_cli_reports_bad_input_as_one_line_and_exit_code_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XCOM_RETURN_PATH", str(tmp_path / "xcom" / "return.json"))
    source = write_csv(tmp_path / "raw.csv", messages(3).drop(columns="label"))

    code = cli.main(["ingest", "--source", source, "--run", str(tmp_path / "run")])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines() == [f"error: ingest: {source} has no 'label' column (columns: id, text)"]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "xcom").exists()
    assert_nothing_written(tmp_path / "run")


# --- gs:// through a local emulator (conftest.py's gcs_bucket) ------------------


def test_gcs_parts_are_ingested_with_their_generations(gcs_bucket: str, config) -> None:
    synth.run(config=config, out=f"{gcs_bucket}/source/part-0000.csv", rows=120, seed=3)
    storage.write_bytes(
        f"{gcs_bucket}/source/part-0001.parquet", tabular.parquet_bytes(pa.Table.from_pandas(messages(8)))
    )
    storage.write_bytes(f"{gcs_bucket}/source/_SUCCESS", b"")
    run_uri = f"{gcs_bucket}/runs/r1"

    result = ingest.run(config=config, source=f"{gcs_bucket}/source/", run_uri=run_uri)

    manifest = storage.read_json(RunLayout(run_uri).ingest_manifest)
    assert [p["uri"] for p in manifest["parts"]] == [
        f"{gcs_bucket}/source/part-0000.csv",
        f"{gcs_bucket}/source/part-0001.parquet",
    ]
    for part in manifest["parts"]:
        info = storage.stat(part["uri"])
        assert part["generation"] == info.generation > 0
        assert part["size"] == info.size
    assert manifest["rows"] == result.xcom["rows"] == 128
    snapshot = pd.read_parquet(io.BytesIO(storage.read_bytes(result.xcom["snapshot_uri"])))
    assert len(snapshot) == 128
    assert json.loads(json.dumps(result.xcom))["snapshot_uri"].startswith("gs://test-bucket/runs/r1/")
