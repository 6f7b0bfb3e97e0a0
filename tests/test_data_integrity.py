"""Damaged MindRecord shards (issue 28.2): named, with what is wrong, before the first step; a read
error later in the run names the shard too."""
from __future__ import annotations

import shutil
import sqlite3
import struct

import numpy as np
import pytest

from tests.test_train import make_rows, write_shard
from tests.test_train_processes import write_config


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return [write_shard(root / f"part{i}.mindrecord", make_rows(40, i)) for i in range(2)]


@pytest.fixture
def shards(pristine, tmp_path):
    copies = []
    for shard in pristine:
        for path in (shard, shard.with_name(shard.name + ".db")):
            shutil.copyfile(path, tmp_path / path.name)
        copies.append(tmp_path / shard.name)
    return copies


def truncate(path, keep):
    with open(path, "r+b") as handle:
        handle.truncate(keep)


def corrupt_header(path):
    with open(path, "r+b") as handle:
        handle.seek(8)
        handle.write(b"#garbage")


def drop_index(path):
    path.with_name(path.name + ".db").unlink()


def header_length_field(path):
    with open(path, "r+b") as handle:
        handle.write(struct.pack("<Q", 1 << 40))


def foreign_index(path):
    other = path.with_name("part0.mindrecord.db")
    shutil.copyfile(other, path.with_name(path.name + ".db"))


@pytest.mark.parametrize("damage,named", [
    (lambda p: truncate(p, p.stat().st_size - 100), r"truncated: \d+ bytes, its header describes \d+"),
    (lambda p: truncate(p, 4), "4 bytes: too short for a MindRecord header"),
    (corrupt_header, "corrupt header: not MindRecord's JSON header"),
    (header_length_field, "corrupt header: its length field says 1099511627776 bytes"),
    (drop_index, r"its index part1.mindrecord.db is missing"),
    (lambda p: truncate(p.with_name(p.name + ".db"), 5000), r"its index part1.mindrecord.db is truncated"),
    (foreign_index, r"its index part1.mindrecord.db belongs to \['part0.mindrecord'\], not to part1.mindrecord"),
])
def test_each_damage_is_named_before_reading(shards, damage, named):
    from pangu_pro.data.dataset import count_samples, create_dataset
    from pangu_pro.data.integrity import DamagedShardError, check_shards

    check_shards([str(p) for p in shards])  # intact
    assert count_samples([str(p) for p in shards]) == 80
    damage(shards[1])
    for opening in (lambda: count_samples([str(p) for p in shards]),
                    lambda: create_dataset([str(p) for p in shards], 4)):
        with pytest.raises(DamagedShardError, match=f"1 of 2 MindRecord shards damaged:\n  - {shards[1]}: {named}"):
            opening()


def test_an_index_counting_other_samples_is_named(shards):
    from pangu_pro.data.integrity import DamagedShardError, check_shards

    db = shards[0].with_name(shards[0].name + ".db")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM INDEXES WHERE ROW_ID = 39")
    with pytest.raises(DamagedShardError, match="part0.mindrecord.db lists 39 samples, the shard's header 40"):
        check_shards([str(shards[0])])


def test_the_cli_names_the_shard_without_a_traceback(shards, tmp_path, capsys):
    from pangu_pro.cli import main

    truncate(shards[0], shards[0].stat().st_size // 2)
    config = write_config(tmp_path, str(shards[0]), steps=4)
    assert main(["train", str(config), f"train.output_dir={tmp_path / 'run'}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pangu-pro train: error: 1 of 1 MindRecord shards damaged:\n  - {shards[0]}: truncated")
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoints").exists()


def test_a_read_error_later_names_the_shard(shards):
    """The shard is damaged after the dataset opened (and was checked): the read error names it."""
    from pangu_pro.data.dataset import create_dataset
    from pangu_pro.data.integrity import DamagedShardError, name_read_errors

    paths = [str(p) for p in shards]
    batches = name_read_errors(create_dataset(paths, 4, shuffle=False).create_tuple_iterator(num_epochs=1), paths)
    corrupt_header(shards[1])
    truncate(shards[1], 2000)
    with pytest.raises(DamagedShardError, match=f"{shards[1]}: corrupt header"):
        for _ in batches:
            pass
    rows = next(name_read_errors(iter([(np.zeros(1),)]), paths[:1]))  # intact data passes through
    assert rows[0].shape == (1,)
