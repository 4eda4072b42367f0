"""Batched sampling (``sia_engine.models.decode``): the shared prefix and padding give the logits
a plain forward pass gives, a batch asked again is bit-identical, a request's samples are rows
seeded ``seed + j``, the sampler draws from the distribution it is given, stops end rows early."""

from __future__ import annotations

import torch

from sia_engine.domain.scaffold import Decoding
from sia_engine.models.decode import Row, _Batch, _pick, common_prefix, sample_rows
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import Message, Request


def test_common_prefix_leaves_every_prompt_a_token() -> None:
    assert common_prefix([(1, 2, 3, 4), (1, 2, 5)]) == 2
    assert common_prefix([(1, 2, 3), (1, 2, 3)]) == 2
    assert common_prefix([(7,), (7, 8)]) == 0
    assert common_prefix([(1, 2), (3, 4)]) == 0


def test_shared_prefix_and_padding_give_the_logits_of_a_plain_forward_pass() -> None:
    m = tiny_model(init_std=0.5)
    net, pad = m.base, m.tok.pad_token_id
    prompts = [tuple(range(40, 60)) + (1, 2, 3), tuple(range(40, 60)) + (9,), tuple(range(40, 60)) + (1, 2, 3), tuple(range(40, 60)) + (5, 6, 7, 8, 9, 10)]
    rows = [Row(p, seed=i, temperature=1.0, max_new_tokens=4) for i, p in enumerate(prompts)]
    with torch.no_grad():
        b = _Batch(net, rows, pad, "cpu")
        for r, p in enumerate(prompts):
            want = net(input_ids=torch.tensor([p])).logits[0, -1]
            assert torch.allclose(b.logits[r], want, atol=1e-4), r
        fed = torch.tensor([11, 12, 13, 14])
        b.step(fed)
        b.keep(torch.tensor([0, 3]))  # rows 1 and 2 leave the batch
        b.step(torch.tensor([21, 22]))
        for r, (p, extra) in enumerate([(prompts[0], (11, 21)), (prompts[3], (14, 22))]):
            want = net(input_ids=torch.tensor([p + extra])).logits[0, -1]
            assert torch.allclose(b.logits[r], want, atol=1e-4), r


def _req(text: str, seed: int, n: int, **decoding: object) -> Request:
    return Request((Message("user", text),), Decoding(**{"temperature": 1.0, "max_new_tokens": 12, **decoding}), seed=seed, n=n)  # type: ignore[arg-type]


def test_a_batch_asked_again_is_bit_identical_and_samples_are_rows_seeded_seed_plus_j() -> None:
    m = tiny_model(init_std=0.5)
    batch = [_req("add two and three", 5, 3), _req("hello", 9, 2)]
    first = m.generate(batch)
    assert len(first) == 5 and m.generate(batch) == first
    split = m.generate([_req("add two and three", 5, 1), _req("add two and three", 6, 1), _req("add two and three", 7, 1), _req("hello", 9, 2)])
    assert split == first  # the same rows, seeded the same: the same batch
    assert len({g.text for g in first[:3]}) > 1  # rows differ from each other


def test_the_sampler_draws_from_the_distribution_it_is_given() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 2
    n = 40_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    picks = _pick(logits.expand(n, 50).contiguous(), [Row((1,), 0, 1.0)] * n, u)
    freq = torch.bincount(picks, minlength=50).double() / n
    assert (freq - torch.softmax(logits[0].double(), -1)).abs().max() < 0.01
    top3 = _pick(logits.expand(n, 50).contiguous(), [Row((1,), 0, 1.0, top_k=3)] * n, u)
    assert set(top3.tolist()) == set(logits[0].topk(3).indices.tolist())
    nucleus = _pick(logits.expand(n, 50).contiguous(), [Row((1,), 0, 1.0, top_p=0.5)] * n, u)
    p = torch.softmax(logits[0], -1)
    srt, order = p.sort(descending=True)
    allowed = set(order[: int(((srt.cumsum(0) - srt) < 0.5).sum())].tolist())
    assert set(nucleus.tolist()) == allowed
    greedy = _pick(logits.expand(4, 50), [Row((1,), 0, 0.0)] * 4, u[:4])
    assert greedy.tolist() == [int(logits[0].argmax())] * 4


def test_a_stop_string_ends_its_row_early_and_the_text_before_it_stands() -> None:
    m = tiny_model(init_std=0.5)
    greedy = Request((Message("user", "count"),), Decoding(temperature=0.0, max_new_tokens=24), seed=0)
    [full] = m.generate([greedy])
    stop = next(c for c in full.text[3:] if c.isascii() and c.isprintable())
    cut = full.text.index(stop)
    [stopped] = m.generate([Request(greedy.messages, Decoding(temperature=0.0, max_new_tokens=24, stop=(stop,)), seed=0)])
    assert stopped.text == full.text[:cut] and stopped.finish == "stop"
    assert stopped.n_tokens < full.n_tokens  # generation ended at the stop, not at the end
    assert [o.finish for o in sample_rows(m.base, m.tok, [Row((5, 6), 0, 0.0, max_new_tokens=3)])] == ["length"]


def test_greedy_requests_are_one_row_and_their_samples_copies() -> None:
    m = tiny_model(init_std=0.5)
    gens = m.generate([Request((Message("user", "q"),), Decoding(temperature=0.0, max_new_tokens=6), seed=1, n=3)])
    assert len(gens) == 3 and gens[0] == gens[1] == gens[2]


def test_the_generation_before_batching_stays_as_an_option() -> None:
    m = tiny_model(init_std=0.5)
    gens = m.generate_serial([_req("hello", 3, 2), _req("bye", 4, 1)])
    assert len(gens) == 3 and m.generate_serial([_req("hello", 3, 2), _req("bye", 4, 1)]) == gens


def test_packed_training_loss_is_the_padded_batchs_over_the_same_tokens() -> None:
    from sia_engine.models.protocol import LoraSettings, TrainExample

    m = tiny_model(init_std=0.5)
    m._training_adapter(LoraSettings(), 3, None)
    exs = [TrainExample((Message("user", "q" * (1 + 7 * i)),), "answer " * (i + 1)) for i in range(3)]
    batch = [m.encode_example(e, 256) for e in exs]
    assert len({len(i) for i, _ in batch}) == 3  # lengths differ: padding would be computed
    with torch.no_grad():
        packed, padded = m._ce_loss(batch, True), m._ce_loss(batch, False)
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)
    with torch.no_grad():
        other_order = m._ce_loss(batch[::-1], True)  # a packed example never attends to its neighbours
    assert torch.allclose(packed, other_order, atol=1e-5)


def test_the_cache_grows_as_rows_generate_and_growing_changes_no_output(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sia_engine.models import decode

    m = tiny_model(init_std=0.5)
    batch = [_req("a long answer", 1, 2, max_new_tokens=40), _req("b", 2, 1, max_new_tokens=40)]
    roomy = m.generate(batch)
    monkeypatch.setattr(decode._Layer, "GROW", 2)  # start with room for 2 new tokens: grows many times
    sizes: list[int] = []
    real = decode._Layer.update

    def spy(self, *a, **k):  # type: ignore[no-untyped-def]
        out = real(self, *a, **k)
        sizes.append(self.kbuf.shape[2])
        return out

    monkeypatch.setattr(decode._Layer, "update", spy)
    assert m.generate(batch) == roomy
    assert min(sizes) < max(sizes)  # it grew, and the outputs are the same
