"""The rules that turn the selection's measurements into a choice, and the choice in words.

Every rule compares two candidates (or two settings of one) out of sample, on the same
case-days, by the paired bootstrap of their difference
(:func:`~gi_utils.evaluation.bootstrap.paired_difference`: case-days resampled with
replacement, 1000 times, seed 0, 95% percentile interval). **Beyond the noise** means that
the whole interval of the gain is above 0; otherwise the simpler option is kept:

* **Post-processing.** The searched settings are kept only when their out-of-sample gain
  over the default (each case-day scored with settings tuned without it: on the other
  folds, or on the other half of the cases for a model with one fold and for a blend) is
  beyond the noise; otherwise the models' own settings are submitted.
* **Models.** Candidates are ranked by their out-of-sample score (with the settings they
  would submit) on the case-days every candidate covers. Going down from the first, a
  candidate is chosen over the best *simpler* one (fewer models, or the same number with
  fewer classifier gates) only when its gain over it is beyond the noise; otherwise the
  simpler one takes its place and faces the simpler ones in turn. So a blend must beat
  the best single model, an extra member the best smaller blend, and a gated model its
  ungated rival, each by more than the noise.

:func:`decide` applies the rules to the candidates of
:func:`~gi_utils.report.selection.select` and says why, one sentence per decision;
:func:`explain_choice` gives those sentences back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gi_utils.evaluation.bootstrap import Interval, paired_difference
from gi_utils.models.run_folder import GATE_SUFFIX
from gi_utils.report.compare import table_markdown

__all__ = ["complexity", "keep_searched", "decide", "explain_choice", "describe_post",
           "choice_markdown", "verdict"]  # fmt: skip



def complexity(member_names: Sequence[str]) -> int:
    """Models plus classifier gates: what a simpler candidate has less of."""
    return len(member_names) + sum(name.endswith(GATE_SUFFIX) for name in member_names)


def keep_searched(fit: Any) -> tuple[bool, Interval | None]:
    """Whether the searched post-processing beats the default out of sample.

    Args:
        fit: a :class:`~gi_utils.evaluation.CrossFit`, or None when the case-days could not
            be split (then the default is kept: nothing checked the searched settings).

    Returns:
        ``(keep, gain)``: keep when the whole 95% interval of the out-of-sample gain
        (tuned minus default, paired on the same case-days) is above 0.
    """
    if fit is None:
        return False, None
    gain = paired_difference(fit.tuned, fit.default)
    return gain.above_zero, gain


def describe_post(post: Any) -> str:
    """``threshold 0.5, min_size 10`` when the classes share the settings, else per class."""
    d = post.to_dict()
    same = all(len(set(d[k])) == 1 for k in ("thresholds", "min_size", "gate_max", "gate_head", "tail"))
    if not same:
        return "per class " + ", ".join(f"thresholds {tuple(d['thresholds'])}", f"min_size {tuple(d['min_size'])}")
    bits = [f"threshold {d['thresholds'][0]:g}", f"min_size {d['min_size'][0]}"]
    bits += [f"{k} {d[k][0]:g}" for k in ("gate_max", "gate_head", "tail") if d[k][0]]
    return ", ".join(bits)


def _settings(post: Any) -> dict:
    return {k: v for k, v in post.to_dict().items() if k not in ("source", "size_ref")}


def _post_sentence(cand: Any) -> str:
    name = cand.name
    if cand.fit is None:
        return (f"Post-processing of {name}: its default settings ({describe_post(cand.default)}) are submitted, "
                "because its case-days come from one case and the searched settings cannot be scored on case-days "
                "they were not tuned on.")  # fmt: skip
    how = "the other folds" if cand.fit.by == "folds" else "the other half of its cases"
    tuned, default = cand.fit.tuned.score(), cand.fit.default.score()
    if _settings(cand.searched.post) == _settings(cand.default):
        return (f"Post-processing of {name}: the default settings ({describe_post(cand.default)}) are submitted; "
                "the search found nothing better.")  # fmt: skip
    if cand.keep_tuned:
        return (f"Post-processing of {name}: the searched settings are kept, because on case-days they were not "
                f"tuned on (tuned on {how}) they score {tuned:.3f} against {default:.3f} with the default, "
                f"a gain of {cand.post_gain.signed()} whose 95% interval is above 0.")  # fmt: skip
    verdict = "a loss" if cand.post_gain.value < 0 else "a gain within the noise (its 95% interval holds 0)"
    return (f"Post-processing of {name}: the default settings ({describe_post(cand.default)}) are submitted, "
            f"because on case-days they were not tuned on (tuned on {how}) the searched settings score "
            f"{tuned:.3f} against {default:.3f}: {verdict}, {cand.post_gain.signed()}.")  # fmt: skip


def _gate_sentences(ranked: Sequence[Any], chosen: Any, common: Sequence[str], said: set) -> list[str]:
    """One sentence per gated single model whose ungated rival is also a candidate (unless
    the pair was already compared: ``said``)."""
    singles = {c.name: c for c in ranked if len(c.member_names) == 1}
    out = []
    for name, gated in singles.items():
        plain = singles.get(name[: -len(GATE_SUFFIX)]) if name.endswith(GATE_SUFFIX) else None
        if plain is None or (name, plain.name) in said:
            continue
        gain = paired_difference(gated.honest, plain.honest, common)
        verdict = "beyond the noise" if gain.above_zero else "within the noise, so the gate does not earn its place"
        used = " (the gated model is submitted)" if gated is chosen else ""
        out.append(f"The classifier gate: {name} against {plain.name} out of sample, {gain.signed()}: {verdict}{used}.")
    return out


def decide(cands: Sequence[Any], common: Sequence[str]) -> tuple[list[Any], list[str]]:
    """Choose among ranked candidates by the rules of the module docstring.

    Args:
        cands: candidates of :func:`~gi_utils.report.selection.select` with ``name``,
            ``member_names``, ``honest`` (out-of-sample :class:`ScoreTerms` under the
            settings they would submit), ``fit``, ``keep_tuned``, ``post_gain``, ``default``.
        common: the case-days every candidate covers (where they are compared).

    Returns:
        ``(candidates, reasons)``: the chosen candidate first, then the others ranked by
        their out-of-sample score on ``common``; one sentence per decision.

    Raises:
        ValueError: no candidate.
    """
    if not cands:
        raise ValueError("no candidate to choose from")
    if not common:  # e.g. two models validated on different folds: no paired comparison
        ranked = sorted(cands, key=lambda c: -c.honest.score())
        reasons = [f"{ranked[0].name} ranks first out of sample on its own case-days ({ranked[0].honest.score():.3f}); "
                   "the candidates share no case-day, so their scores are not compared on the same ones and "
                   "no gain is tested against the noise.", _post_sentence(ranked[0])]  # fmt: skip
        return ranked, reasons
    scores = {c.name: c.honest.subset(common).score() for c in cands}
    ranked = sorted(cands, key=lambda c: -scores[c.name])  # stable: ties keep the order
    n = len(common)
    chosen, reasons, said = ranked[0], [], set()
    reasons.append(f"{chosen.name} ranks first out of sample: {scores[chosen.name]:.3f} on the {n} case-days every "
                   "candidate covers, each scored with settings not tuned on it.")  # fmt: skip
    while True:
        simpler = [c for c in ranked if complexity(c.member_names) < complexity(chosen.member_names)]
        if not simpler:
            break
        rival = simpler[0]  # the best simpler one
        said.add((chosen.name, rival.name))
        gain = paired_difference(chosen.honest, rival.honest, common)
        what = "blend" if len(chosen.member_names) > len(rival.member_names) else "gated model"
        if gain.above_zero:
            reasons.append(f"The {what} {chosen.name} is chosen over the simpler {rival.name}: its gain, "
                           f"{gain.signed()}, is beyond the noise (the 95% interval is above 0).")  # fmt: skip
            break
        reasons.append(f"The {what} {chosen.name} is not chosen: its gain over the simpler {rival.name}, "
                       f"{gain.signed()}, is within the noise of {n} case-days (the 95% interval holds 0), "
                       f"so {rival.name} is preferred.")  # fmt: skip
        chosen = rival
    reasons += _gate_sentences(ranked, chosen, common, said)
    others = [c for c in ranked if c is not chosen]
    if others:
        gap = paired_difference(chosen.honest, others[0].honest, common)
        reasons.append(f"{chosen.name} against the next candidate, {others[0].name}: {gap.signed()} "
                       f"({'beyond' if gap.above_zero else 'within'} the noise).")  # fmt: skip
    reasons.append(_post_sentence(chosen))
    for member in chosen.submitted_finals:
        reasons.append(f"{member} is submitted as its whole-data run, with the settings chosen on its folds' "
                       "out-of-fold predictions.")  # fmt: skip
    return [chosen, *others], reasons


def explain_choice(candidates: Sequence[Any]) -> list[str]:
    """The sentences that say what :func:`~gi_utils.report.selection.select` chose and
    why (one per decision), for ``03_compare`` to print.

    Raises:
        ValueError: the candidates were not ranked by ``select`` (no reasons recorded).
    """
    if not candidates or not getattr(candidates[0], "reasons", None):
        raise ValueError("no reasons recorded: pass the candidates returned by select()")
    return list(candidates[0].reasons)


def choice_markdown(table: Any, candidates: Sequence[Any]) -> str:
    """The selection table as Markdown (:func:`~gi_utils.report.table_markdown`) followed by
    what was chosen and why, one bullet per decision (``03_compare`` writes it as
    ``selection.md``, which ``make docs`` copies into ``docs/results.md``)."""
    best = candidates[0]
    weights = "/".join(f"{w:g}" for w in best.weights)
    lines = [f"**Chosen: {best.name}** (weights {weights}, {'searched' if best.keep_tuned else 'default'} "
             "post-processing), because:", ""]  # fmt: skip
    lines += [f"- {sentence}" for sentence in explain_choice(candidates)]
    return table_markdown(table) + "\n" + "\n".join(lines) + "\n"


def _negated(gap: Interval) -> Interval:
    return Interval(-gap.value, -gap.high, -gap.low)


def verdict(candidates: Sequence[Any], holdout: float | None = None, synthetic: bool = False) -> str:
    """The choice in one plain paragraph (Markdown), for the top of ``03_compare``: what is
    submitted, its score on case-days it was not tuned on, its gain over the simpler option
    and whether that is beyond the noise, and its hold-out score where there is one.

    Args:
        candidates: :func:`~gi_utils.report.selection.select`'s, the chosen one first (their
            ``figures`` filled).
        holdout: the chosen one's score on the hold-out (the test split's own truth), if any.
        synthetic: the runs trained on synthetic data (then the paragraph says so).
    """
    best, others = candidates[0], list(candidates[1:])
    common = set(best.case_days).intersection(*(set(c.case_days) for c in others))
    score = Interval(*best.figures["common"])
    what = f"the blend {best.name} (weights {'/'.join(f'{w:g}' for w in best.weights)})" if len(best.members) > 1 else best.name
    post = "the post-processing searched on its out-of-fold predictions" if best.keep_tuned else "the models' own post-processing"
    text = (f"**We submit {what}** with {post}. On the {len(common)} case-days "
            f"{'every candidate was validated on' if others else 'it was validated on'}, each predicted by models that "
            f"did not train on it and scored with settings not tuned on it, it scores **{score.value:.3f}** "
            f"(95% interval {score.low:.3f} to {score.high:.3f}, from resampling those case-days).")  # fmt: skip
    simpler = [c for c in others if complexity(c.member_names) < complexity(best.member_names)]
    rival = simpler[0] if simpler else others[0] if others else None
    if rival is None:
        text += " It is the only candidate, so nothing is compared."
    else:
        gain = _negated(Interval(*rival.figures["vs_chosen"]))
        kind = "simpler" if simpler else "next-best"
        noise = ("beyond the noise (the whole 95% interval is above 0)" if gain.above_zero
                 else "within the noise (the 95% interval includes 0)")  # fmt: skip
        text += f" Against the {kind} option, {rival.name}, it gains {gain.signed()}: {noise}."
        if not simpler:
            text += " It is also the simplest candidate, which wins ties."
    if holdout is not None:
        text += (f" On the hold-out, scans whose truth no step of the choice read, it scores {holdout:.3f} "
                 "(a handful of scans: a few thousandths are noise).")  # fmt: skip
    if synthetic:
        text += " **These are scores on SYNTHETIC DATA, not leaderboard scores.**"
    return text
