"""FastMaskDecoder equals segment_anything's PromptEncoder + MaskDecoder.

``exact=True`` (what the models use) must reproduce upstream bit for bit;
``exact=False`` (reassociated attention, GEMM upscaling) within float32
rounding.  Checked on a small and on a full-size (SAM ViT-B decoder)
random decoder, for boxes, points, box + points, multimask and mask input.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from napari_samlab.models.fast_decoder import FastMaskDecoder, fast_decoder_for
from napari_samlab.models.sam_family import build_prompt_decoder, default_decoder_config

SMALL_DEC = {"transformer_dim": 64, "num_multimask_outputs": 3, "transformer_depth": 2, "transformer_mlp_dim": 128,
             "iou_head_depth": 3, "iou_head_hidden_dim": 64, "mask_in_chans": 8}


def _decoder(dec, seed=0):
    torch.manual_seed(seed)
    pe, md = build_prompt_decoder(1024, 64, dec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(pe.state_dict().items()) + list(md.state_dict().items()):
            if t.is_floating_point() and "norm" not in name:
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return pe.eval(), md.eval()


def _prompts(dim):
    box = torch.tensor([[[200.0, 240.0, 600.0, 680.0]]])
    pts = (torch.tensor([[[300.0, 400.0], [100.0, 900.0]]]), torch.tensor([[1, 0]]))
    one = (torch.tensor([[[512.0, 300.0]]]), torch.tensor([[1]]))
    mask = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(3)) * 4
    return {
        "box": dict(boxes=box),
        "point": dict(points=one),
        "points": dict(points=pts),
        "box+points": dict(points=pts, boxes=box),
        "mask_input": dict(points=one, masks=mask),
        "box+mask_input": dict(boxes=box, masks=mask),
    }


def _upstream(pe, md, feats, p, multimask):
    sparse, dense = pe(points=p.get("points"), boxes=p.get("boxes"), masks=p.get("masks"))
    return md(image_embeddings=feats, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
              dense_prompt_embeddings=dense, multimask_output=multimask)


@pytest.fixture(scope="module", params=["small", pytest.param("full", marks=pytest.mark.slow)])
def decoder(request):
    dec = SMALL_DEC if request.param == "small" else default_decoder_config()
    pe, md = _decoder(dec, seed=1 if request.param == "small" else 2)
    feats = torch.randn(1, dec["transformer_dim"], 64, 64, generator=torch.Generator().manual_seed(5)) * 0.5
    yield request.param, pe, md, feats
    gc.collect()


@pytest.mark.parametrize("multimask", [False, True])
def test_exact_path_is_bitwise_upstream(decoder, multimask):
    name, pe, md, feats = decoder
    fast = fast_decoder_for(pe, md)
    assert fast is not None and fast.exact
    arr = np.zeros(1)  # stands for the embedding array: the cache key
    with torch.inference_mode():
        for label, p in _prompts(feats.shape[1]).items():
            want_lr, want_iou = _upstream(pe, md, feats, p, multimask)
            for _ in range(2):  # second call: layer-0 image side from the cache
                lr, iou = fast(feats, multimask=multimask, **p)
                assert torch.equal(lr, want_lr), f"{name} {label}: {(lr - want_lr).abs().max()}"
                assert torch.equal(iou, want_iou), label
            r = fast.decode(feats, multimask=multimask, select_best=True, key_obj=arr, **p)
            k = int(torch.argmax(want_iou[0])) if multimask else 0
            assert r.index == k
            assert torch.equal(r.low_res[0, 0], want_lr[0, k])
    assert fast.cache_hits > 0


@pytest.mark.parametrize("multimask", [False, True])
def test_reassociated_path_within_rounding(decoder, multimask):
    name, pe, md, feats = decoder
    fast = FastMaskDecoder(pe, md, exact=False)
    with torch.inference_mode():
        for label, p in _prompts(feats.shape[1]).items():
            want_lr, want_iou = _upstream(pe, md, feats, p, multimask)
            lr, iou = fast(feats, multimask=multimask, **p)
            assert lr.shape == want_lr.shape and iou.shape == want_iou.shape
            np.testing.assert_allclose(lr.numpy(), want_lr.numpy(), atol=1e-4, err_msg=f"{name} {label}")
            np.testing.assert_allclose(iou.numpy(), want_iou.numpy(), atol=1e-5, err_msg=label)
            # masks equal away from the threshold (float32 rounding may flip logits within 1e-4 of 0)
            sure = want_lr.abs() > 1e-4
            assert torch.equal((lr > 0)[sure], (want_lr > 0)[sure]), label
            r = fast.decode(feats, multimask=multimask, select_best=True, **p)
            k = int(torch.argmax(want_iou[0])) if multimask else 0
            assert r.index == k or abs(float(want_iou[0, r.index] - want_iou[0, k])) < 1e-5
            np.testing.assert_allclose(r.low_res[0, 0].numpy(), want_lr[0, r.index].numpy(), atol=1e-4)


def test_cache_is_per_embedding():
    pe, md = _decoder(SMALL_DEC)
    fast = fast_decoder_for(pe, md)
    box = torch.tensor([[[200.0, 240.0, 600.0, 680.0]]])
    with torch.inference_mode():
        a = np.random.default_rng(0).standard_normal((1, 64, 64, 64)).astype(np.float32)
        b = np.random.default_rng(1).standard_normal((1, 64, 64, 64)).astype(np.float32)
        ra = fast.decode(torch.from_numpy(a), boxes=box, key_obj=a).low_res
        rb = fast.decode(torch.from_numpy(b), boxes=box, key_obj=b).low_res
        assert not torch.equal(ra, rb)
        assert torch.equal(fast.decode(torch.from_numpy(a), boxes=box, key_obj=a).low_res, ra)
        assert fast.cache_hits == 1
        want = _upstream(pe, md, torch.from_numpy(b), {"boxes": box}, False)[0]
        assert torch.equal(rb, want)


def test_nonstandard_decoder_falls_back():
    pe, md = _decoder(SMALL_DEC)
    md.output_upscaling[2] = torch.nn.ReLU()
    assert fast_decoder_for(pe, md) is None
