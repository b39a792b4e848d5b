"""Strict checkpoint loading (issue 12.5) and fast refusal of non-checkpoints (issue 17.10).

Every family's loader compares the file with the network it builds: extra or
missing keys stop the load with one line naming them and what the file looks
like; training bookkeeping is ignored and listed by ``samlab info``.  A file
that is not a torch.save file is refused from its header, before anything is
unpickled.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import pytest
import torch

import checkpoint_factory as factory
from napari_samlab.errors import SamlabError
from napari_samlab.models.checkpoint import check_state_dict_keys, guess_file_kind, load_checkpoint, sniff_checkpoint
from napari_samlab.models.registry import describe_checkpoint, load_model
from test_cli import samlab
from test_msa import write_msa
from test_samed import write_base, write_samed


# --------------------------------------------------------------------------
# key checks
# --------------------------------------------------------------------------
def test_sam_file_with_one_extra_key_names_it(tmp_path):
    sd = factory.sam_state_dict(seed=1)
    sd["mask_decoder.extra_head.weight"] = torch.zeros(3)
    path = factory.save(sd, tmp_path / "sam_plus.pth")
    with pytest.raises(SamlabError) as err:
        load_model(path, family="sam")
    msg = str(err.value)
    assert "1 unexpected key (mask_decoder.extra_head.weight)" in msg and "\n" not in msg
    assert "looks like a SAM" in msg


def test_missing_keys_are_named_five_at_most(tmp_path):
    sd = factory.litemedsam_state_dict(seed=2)
    dropped = sorted(k for k in sd if k.startswith("mask_decoder.output_hypernetworks_mlps."))[:7]
    for k in dropped:
        del sd[k]
    path = factory.save(sd, tmp_path / "lite_cut.pth")
    with pytest.raises(SamlabError) as err:
        load_model(path, family="litemedsam")
    msg = str(err.value)
    assert "7 missing keys (" in msg and ", ...)" in msg
    assert sum(k in msg for k in dropped) == 5
    assert "LiteMedSAM" in msg


def test_guess_names_what_the_file_is():
    lora = {"w_a_000": torch.zeros(4, 64), "w_b_000": torch.zeros(64, 4)}
    with pytest.raises(SamlabError, match="looks like a SAMed LoRA file"):
        check_state_dict_keys(["image_encoder.pos_embed"], lora, "SAM vit_b")
    assert guess_file_kind({"state": {}, "param_groups": []}).startswith("an optimizer state")
    assert "MSA" in guess_file_kind({"image_encoder.blocks.0.Space_Adapter.D_fc1.weight": torch.zeros(1)})


def test_samed_lora_with_extra_key_and_msa_with_extra_key(tmp_path):
    lora = torch.load(write_samed(tmp_path), weights_only=True)
    lora["w_c_000"] = torch.zeros(4, 64)  # not a factor SAMed has: would be silently dropped
    bad = tmp_path / "samed_plus.pth"
    torch.save(lora, bad)
    with pytest.raises(SamlabError, match=r"the SAMed checkpoint .*1 unexpected key \(w_c_000\)"):
        load_model(bad, family="samed", base_checkpoint=write_base(tmp_path))
    base = torch.load(write_base(tmp_path), weights_only=True)
    base["image_encoder.extra_norm.weight"] = torch.zeros(1)
    torch.save(base, tmp_path / "base_plus.pth")
    with pytest.raises(SamlabError, match=r"the base checkpoint .*image_encoder.extra_norm.weight"):
        load_model(write_samed(tmp_path), family="samed", base_checkpoint=tmp_path / "base_plus.pth")
    file = torch.load(write_msa(tmp_path, "C", depth=2, global_idx=(1,)), weights_only=True)
    file["state_dict"]["image_encoder.blocks.0.Extra_Adapter.D_fc1.weight"] = torch.zeros(2, 2)
    torch.save(file, tmp_path / "msa_plus.pth")
    with pytest.raises(SamlabError, match=r"1 unexpected key \(image_encoder.blocks.0.Extra_Adapter.D_fc1.weight\)"):
        load_model(tmp_path / "msa_plus.pth")


def test_cli_names_the_unknown_key(tmp_path):
    """Issue 12 check (c): a SAMed LoRA file and a SAM ViT-B-layout file with one extra key, via the CLI."""
    img = tmp_path / "img.png"
    import imageio.v3 as iio
    import numpy as np

    iio.imwrite(img, (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    lora = torch.load(write_samed(tmp_path), weights_only=True)
    lora["lora_extra"] = torch.zeros(2)
    torch.save(lora, tmp_path / "samed_plus.pth")
    sd = factory.sam_state_dict(seed=1)
    sd["image_encoder.unknown_scale"] = torch.ones(1)
    factory.save(sd, tmp_path / "sam_plus.pth")
    runs = [(["--checkpoint", tmp_path / "samed_plus.pth", "--base-checkpoint", write_base(tmp_path)], "lora_extra"),
            (["--model", "sam", "--checkpoint", tmp_path / "sam_plus.pth", "--box", 5, 5, 40, 40],
             "image_encoder.unknown_scale")]
    for extra, key in runs:
        out = tmp_path / "o.png"
        res = samlab("segment", img, "-o", out, *extra)
        assert res.returncode == 1, res.stderr
        err = res.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and key in err, err
        assert not out.exists()


def test_bookkeeping_is_ignored_and_listed(tmp_path):
    path = write_msa(tmp_path, "C", depth=2, global_idx=(1,))  # epoch, model name, optimizer, best_tol, path_helper
    info = describe_checkpoint(path)
    assert set(info["ignored"]) == {"epoch", "model", "optimizer", "best_tol", "path_helper"}
    res = samlab("info", path, "--json")
    assert res.returncode == 0, res.stderr
    assert "path_helper" in json.loads(res.stdout)["ignored"]


def test_weights_beside_the_weights_are_refused(tmp_path):
    sd = factory.sam_state_dict(seed=1)
    torch.save({"model": sd, "ema": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "two.pth")
    with pytest.raises(SamlabError, match="holds weights under ema"):
        load_checkpoint(tmp_path / "two.pth")


# --------------------------------------------------------------------------
# header sniffing: refuse before reading
# --------------------------------------------------------------------------
class CountingReader(io.RawIOBase):
    """A read-only file that counts the bytes handed out."""

    def __init__(self, path):
        self._f = open(path, "rb")
        self.bytes_read = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return self._f.seek(pos, whence)

    def tell(self):
        return self._f.tell()

    def readinto(self, b):
        n = self._f.readinto(b)
        self.bytes_read += n or 0
        return n

    def close(self):
        self._f.close()
        super().close()


BIG = 8 << 20  # 8 MiB of random bytes


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95", b"\x00\x01"])
def test_big_random_file_is_refused_from_its_header(tmp_path, head, monkeypatch):
    path = tmp_path / "random.pth"
    with open(path, "wb") as f:
        f.write(head)
        f.write(os.urandom(BIG))
    reader = CountingReader(path)
    with pytest.raises(SamlabError):
        sniff_checkpoint(reader, path.name)
    reader.close()
    assert reader.bytes_read < 256 << 10, reader.bytes_read  # far less than the file: no unpickling

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load must not run on a file whose header is wrong")

    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(SamlabError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_real_checkpoints_pass_the_header_check(tmp_path):
    sd = {"w": torch.arange(6.0)}
    torch.save(sd, tmp_path / "zip.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, tmp_path / "legacy4.pth", _use_new_zipfile_serialization=False, pickle_protocol=4)
    for name, kind in (("zip.pth", "zip"), ("legacy.pth", "legacy"), ("legacy4.pth", "legacy")):
        with open(tmp_path / name, "rb") as f:
            assert sniff_checkpoint(f, name) == kind
    for name in ("zip.pth", "legacy.pth"):  # torch's weights-only reader takes legacy files of protocol 2 only
        assert torch.equal(load_checkpoint(tmp_path / name).state_dict["w"], sd["w"])


def test_foreign_zip_and_plain_pickle_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bundle.pth", "w") as z:
        z.writestr("weights/readme.txt", "not a checkpoint")
    with pytest.raises(SamlabError, match="without data.pkl"):
        load_checkpoint(tmp_path / "bundle.pth")
    with open(tmp_path / "plain.pth", "wb") as f:
        pickle.dump({"w": [1, 2, 3]}, f, protocol=2)
    with pytest.raises(SamlabError, match="pickle but not a torch.save file"):
        load_checkpoint(tmp_path / "plain.pth")


def test_refusal_happens_before_torch_is_imported(tmp_path):
    """The header check runs before `import torch` (seconds of start-up on a busy machine)."""
    import subprocess
    import sys

    bad = tmp_path / "random.pth"
    bad.write_bytes(b"\x80\x02" + os.urandom(1 << 20))
    code = ("import sys\n"
            "from napari_samlab.errors import SamlabError\n"
            "from napari_samlab.models.registry import load_model\n"
            "try:\n"
            f"    load_model({str(bad)!r}, family='medsam')\n"
            "except SamlabError as err:\n"
            "    print('refused', 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.stdout.strip() == "refused False", res.stdout + res.stderr
