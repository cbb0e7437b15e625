"""Champion against each challenger on the same labels: the sequential verdict both ways.

From the store's running paired totals (every pair since the comparison's first) or, for a
probation, from the pairs received since it began. The challenger's verdict says whether it may
replace the champion ("better": non-inferior within the margin); the champion's, the same test with
the roles swapped, says whether the champion is worse than that challenger by more than the margin
(the alert, and the guard's rollback during a probation).
"""

from dataclasses import dataclass

from . import verdict as sequential


@dataclass(frozen=True)
class Comparison:
    """One challenger against one champion: the pair's versions and both verdicts."""

    challenger: str
    champion: str
    challenger_verdict: sequential.Verdict  # the challenger against the champion
    champion_verdict: sequential.Verdict    # the champion against the challenger

    def report(self):
        """What `calories compare` prints for it."""
        v = self.challenger_verdict
        return {"challenger": self.challenger, "champion": self.champion, "pairs": v.pairs,
                "challenger_rmsle": v.challenger_rmsle, "champion_rmsle": v.champion_rmsle,
                "mean_difference": v.mean, "interval": [v.lower, v.upper], "margin": v.margin,
                "verdict": v.verdict, "champion_verdict": self.champion_verdict.verdict}


def comparisons(totals):
    """[Comparison] of {(challenger, champion): PairedStats}, in version order."""
    out = []
    for (challenger, champion), stats in sorted(totals.items()):
        difference = stats.sle - stats.champion_sle
        forward = sequential.verdict(stats.pairs, difference, stats.squares, stats.champion_sle, stats.sle)
        swapped = sequential.verdict(stats.pairs, -difference, stats.squares, stats.sle, stats.champion_sle)
        out.append(Comparison(challenger, champion, forward, swapped))
    return out


def current(store, since=None):
    """The comparisons of every pair (since=None: the running totals) or of those received since."""
    return comparisons(store.paired_totals() if since is None else store.paired_quality(since))
