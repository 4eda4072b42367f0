"""LawBench scorers, one per task id, with the semantics of the official evaluation code
(open-compass/LawBench ``evaluation/``), re-implemented here. Each takes a list of
(prediction, reference) pairs and returns ``{"score", "abstention_rate"}``.

2-1 (document proofreading) is SIMPLIFIED: the official scorer is ChERRANT's character-level
F0.5; this one aligns source->prediction and source->reference with ``difflib`` and scores the
character edits as sets (F0.5). Its numbers differ from the published ones.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from collections.abc import Set as AbstractSet

__all__ = ["SCORERS", "SIMPLIFIED", "Pair", "score_file", "rc_f1"]

Pair = tuple[str, str, str]  # (prompt text, prediction, reference)
Result = dict[str, float]


def _set_f1(pred: AbstractSet[Hashable], gold: AbstractSet[Hashable]) -> float:
    hit = len(pred & gold)
    p = hit / len(pred) if pred else 0.0
    r = hit / len(gold) if gold else 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _mc_judge(prediction: str, options: Sequence[str], answer: str) -> tuple[int, int]:
    """(correct, abstained): correct when the gold option is the only option in the text."""
    found = {o for o in options if o in prediction}
    if not found:
        return 0, 1
    return int(found == {answer}), 0


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _multiple_choice(options: Sequence[str], gold_of: Callable[[str], str | None]) -> Callable[[Sequence[Pair]], Result]:
    def score(pairs: Sequence[Pair]) -> Result:
        scores, abstained = [], 0
        for _, pred, ref in pairs:
            gold = gold_of(ref)
            if gold is None:  # an item the official scorer skips
                continue
            ok, ab = _mc_judge(pred, options, gold)
            scores.append(ok)
            abstained += ab
        return {"score": _mean(scores), "abstention_rate": abstained / len(pairs)}

    return score


def _label_f1(options: Sequence[str], gold_of: Callable[[str], list[str]]) -> Callable[[Sequence[Pair]], Result]:
    def score(pairs: Sequence[Pair]) -> Result:
        scores, abstained = [], 0
        for _, pred, ref in pairs:
            found = {o for o in options if o in pred}
            abstained += not found
            scores.append(_set_f1(found, set(gold_of(ref))))
        return {"score": _mean(scores), "abstention_rate": abstained / len(pairs)}

    return score


def _rouge_l(strip: str = "") -> Callable[[Sequence[Pair]], Result]:
    def score(pairs: Sequence[Pair]) -> Result:
        import logging

        import jieba
        from rouge_chinese import Rouge

        jieba.setLogLevel(logging.WARNING)

        hyps = [" ".join(jieba.cut(p)) for _, p, _ in pairs]
        hyps = [h if h.strip() else "无内容" for h in hyps]
        refs = [" ".join(jieba.cut(r.replace(strip, "") if strip else r)) for _, _, r in pairs]
        rows = Rouge().get_scores(hyps, refs)
        return {"score": _mean([r["rouge-l"]["f"] for r in rows]), "abstention_rate": 0.0}

    return score


def _rc_tokens(s: str) -> list[str]:
    return [c for c in s.lower() if c.isdigit() or c.isalpha()] if s else []


def rc_f1(gold: str, pred: str) -> float:
    """Character-level F1 after lower-casing and keeping letters and digits only (CJRC style)."""
    g, p = _rc_tokens(gold), _rc_tokens(pred)
    if not g or not p:
        return float(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _reading(pairs: Sequence[Pair]) -> Result:
    return {"score": _mean([rc_f1(ref.replace("回答:", ""), pred) for _, pred, ref in pairs]), "abstention_rate": 0.0}


NER_TYPES = ("犯罪嫌疑人", "受害人", "被盗货币", "物品价值", "盗窃获利", "被盗物品", "作案工具", "时间", "地点", "组织机构")


def _entities_pred(pred: str, types: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for etype in types:
        for m in re.finditer(etype, pred):
            end = m.end()
            if end >= len(pred) - 2:
                continue
            if pred[end] in (":", "："):
                value = re.split("\n| ", pred[end + 1 :].strip())[0].strip()
                if value not in ("无", "未提及"):
                    out[etype] = value
    return out


def _entities_ref(ref: str) -> dict[str, str]:
    if not ref.strip():
        return {}
    out = {}
    for seg in ref.split(";"):
        parts = seg.split(":")
        out[parts[0]] = parts[1]
    return out


def _ner(pairs: Sequence[Pair]) -> Result:
    """Soft F1 per entity type. (The official code returns its abstention rate under a misspelt
    key, so published tables show 0 for 2-6; the rate here is the real one.)"""
    total, abstained = 0.0, 0
    for _, pred, ref in pairs:
        h, r = _entities_pred(pred, NER_TYPES), _entities_ref(ref)
        if not r:
            total += 1.0 if not h else 0.0
            continue
        abstained += not h
        hits = [rc_f1(r[t], v) for t, v in h.items() if t in r]
        prec = sum(hits) / len(h) if h else 0.0
        rec = sum(hits) / len(r)
        total += 2 * prec * rec / (prec + rec + 1e-10)
    return {"score": total / len(pairs), "abstention_rate": abstained / len(pairs)}


def _to_arabic(text: str) -> str:
    import cn2an

    return str(cn2an.transform(text, "cn2an"))


def _articles(pairs: Sequence[Pair]) -> Result:
    scores, abstained = [], 0
    for _, pred, ref in pairs:
        gold = {int(x) for x in ref.replace("法条:刑法第", "").replace("条", "").split("、")}
        found = set()
        for chunk in pred.split("、"):
            chunk = chunk.replace("万元", "元")
            chunk = re.sub(r"第(.*?)款", "", chunk)
            chunk = re.sub(r"第(.*?)条", lambda m: m.group(1), chunk)
            numbers = re.findall(r"\d+", _to_arabic(chunk))
            if numbers:
                found.add(int(numbers[0]))
        abstained += not found
        scores.append(_set_f1(found, gold))
    return {"score": _mean(scores), "abstention_rate": abstained / len(pairs)}


def _prison(pairs: Sequence[Pair]) -> Result:
    """Normalised log distance (log 216 - mean |log(gold+1) - log(pred+1)|) / log 216; death
    and life sentences are skipped; no term found counts as the maximum distance log 216."""
    dists, abstained = [], 0
    for _, pred, ref in pairs:
        if "死刑" in ref or "无期" in ref:
            continue
        gold = int(ref.replace("刑期:", "").replace("个月", ""))
        text = _to_arabic(pred)
        months = [int(x[:-2]) for x in re.findall(r"\d+个月", text)] + [int(x[:-1]) for x in re.findall(r"\d+月", text)]
        years = [int(x[:-1]) for x in re.findall(r"\d+年", text)]
        if months:
            dists.append(abs(math.log(gold + 1) - math.log(months[0] + 1)))
        elif years:
            dists.append(abs(math.log(gold + 1) - math.log(years[0] * 12 + 1)))
        else:
            abstained += 1
            dists.append(math.log(216))
    return {"score": (math.log(216) - _mean(dists)) / math.log(216), "abstention_rate": abstained / len(pairs)}


def _amount(pairs: Sequence[Pair]) -> Result:
    scores, abstained = [], 0
    for _, pred, ref in pairs:
        gold = float(ref.replace("上文涉及到的犯罪金额:", "").replace("元。", ""))
        numbers = [float(x) for x in re.findall(r"\d+\.?\d*", pred)]
        abstained += not numbers
        scores.append(int(gold in numbers))
    return {"score": _mean(scores), "abstention_rate": abstained / len(pairs)}


def _char_edits(src: str, tgt: str) -> set[tuple[int, int, str]]:
    return {(i1, i2, tgt[j1:j2]) for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, src, tgt, autojunk=False).get_opcodes() if op != "equal"}


def _proofreading(pairs: Sequence[Pair]) -> Result:
    """SIMPLIFIED 2-1: the official preparation of the sentences (source taken after "句子：\n",
    newlines and tabs removed, predictions cut to at most 5 characters longer than the reference,
    an empty one read as "无内容"), then F0.5 over character edits from difflib alignments, where
    the official scorer aligns with ChERRANT's pinyin- and shape-aware costs and merges edits."""
    tp = fp = fn = 0
    for prompt, pred, ref in pairs:
        start = prompt.index("句子：\n") + 4 if "句子：\n" in prompt else 0
        src = re.sub(r"\n|\t", "", prompt[start:].split("\n")[0])
        hyp = re.sub(r"\n|\t", "", pred)
        if len(hyp) - len(ref) > 5:
            hyp = hyp[: len(ref) + 5]
        hyp = hyp or "无内容"
        h, g = _char_edits(src, hyp), _char_edits(src, re.sub(r"\n|\t", "", ref))
        tp += len(h & g)
        fp += len(h - g)
        fn += len(g - h)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    beta2 = 0.25
    return {"score": (1 + beta2) * p * r / (beta2 * p + r) if p + r else 0.0, "abstention_rate": 0.0}


def _triggers(pairs: Sequence[Pair]) -> Result:
    """2-10 trigger words, as the official code computes it: ';'-separated words paired by
    position with the character F1; its precision and recall divide by the lengths of the last
    predicted and gold words (a quirk of the official code, kept so that scores are comparable)."""
    total = 0.0
    for _, pred, ref in pairs:
        golds, preds = ref.split(";"), pred.split(";")
        pairs_ = list(zip(golds, preds, strict=False))
        hits = [rc_f1(g, h) for g, h in pairs_]
        last_g, last_h = (pairs_[-1] if pairs_ else ("", ""))
        prec = sum(hits) / len(last_h) if last_h else 0.0
        rec = sum(hits) / len(last_g) if last_g else 0.0
        total += 2 * prec * rec / (prec + rec + 1e-10)
    return {"score": total / len(pairs), "abstention_rate": 0.0}


from tasks.lawbench.data import LawBenchDataError  # noqa: E402
from tasks.lawbench.labels import CHARGES, DISPUTE_FOCUS, EVENTS, MARITAL, TOPICS  # noqa: E402

SCORERS: dict[str, Callable[[Sequence[Pair]], Result]] = {
    "1-1": _rouge_l(strip="答案:"),
    "1-2": _multiple_choice("ABCD", lambda ref: ref[5]),
    "2-1": _proofreading,
    "2-2": _multiple_choice(DISPUTE_FOCUS, lambda ref: None if ref[7:-1] == "赔偿" else ref[7:-1]),
    "2-3": _label_f1(MARITAL, lambda ref: ref[3:-1].split("、")),
    "2-4": _multiple_choice(TOPICS, lambda ref: ref),
    "2-5": _reading,
    "2-6": _ner,
    "2-7": _rouge_l(),
    "2-8": _multiple_choice("ABCDE", lambda ref: ref[6]),
    "2-9": _label_f1(EVENTS, lambda ref: ref.split(";")),
    "2-10": _triggers,
    "3-1": _articles,
    "3-2": _rouge_l(),
    "3-3": _label_f1(CHARGES, lambda ref: ref.replace("罪名:", "").split(";")),
    "3-4": _prison,
    "3-5": _prison,
    "3-6": _multiple_choice("ABCD", lambda ref: ref[5]),
    "3-7": _amount,
    "3-8": _rouge_l(),
}
SIMPLIFIED = {"2-1"}


def score_file(task: str, pairs: Sequence[Pair]) -> Result:
    """Score one task's (prompt, prediction, reference) triples; ``simplified`` marks 2-1."""
    import warnings

    if task not in SCORERS:
        raise KeyError(task)
    if not pairs:
        raise ValueError(f"task {task}: no items to score")
    with warnings.catch_warnings():  # cn2an warns on every number it cannot read
        warnings.simplefilter("ignore", UserWarning)
        try:
            out = dict(SCORERS[task](pairs))
        except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as e:
            bad = next((i for i, p in enumerate(pairs) if _fails(task, p)), None)
            raise LawBenchDataError(f"task {task}", f"item {bad}'s reference {pairs[bad][2][:80]!r} is not in the published format "
                                    f"({type(e).__name__}: {e})" if bad is not None else f"not in the published format ({type(e).__name__}: {e})") from None
    out["simplified"] = float(task in SIMPLIFIED)
    return out


def _fails(task: str, pair: Pair) -> bool:
    try:
        SCORERS[task]([pair])
    except (ValueError, IndexError, KeyError, TypeError, ArithmeticError):
        return True
    return False
