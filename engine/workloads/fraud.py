"""Built-in fraud workloads: synthetic card-transaction histories with planted fraud patterns.

One generator serves two models. ``fraud-gru`` reads each card's last ``seq_len`` transactions
as a sequence; ``fraud-mlp`` reads the same histories aggregated into flat per-card features.

A card is fraudulent when its last few transactions were made by a fraudster. Fraud shows one
or more of four patterns, each of which honest cards also show now and then, so no single
feature gives it away:

- burst: several transactions minutes apart (honest cards: the occasional shopping spree);
- night: transactions between 2 and 5 am (honest cards: night owls);
- geography jump: a new country soon after the last transaction (honest cards: travel, slower);
- amount spike: a large online purchase in a risky category (honest cards: rare big buys).

A share of fraud shows no pattern at all, which caps how well any model can do, as in practice.
Everything is drawn from a local ``torch.Generator``: the same seed gives identical tensors.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WorkloadError
from .base import Workload
from .table import MLP

__all__ = [
    "Transactions",
    "generate_transactions",
    "sequence_features",
    "card_features",
    "average_precision",
    "FraudGRU",
    "fraud_gru",
    "fraud_mlp",
    "CATEGORIES",
]

# -- merchant categories ---------------------------------------------------------------------

CATEGORIES = (
    "grocery",
    "fuel",
    "restaurant",
    "transport",
    "pharmacy",
    "clothing",
    "utilities",
    "entertainment",
    "travel",
    "electronics",
    "jewelry",
    "gift_cards",
)
RISKY = (9, 10, 11)  # indices of the categories fraudsters favour
_CATEGORY_LOG_AMOUNT = (3.4, 3.8, 3.2, 2.4, 3.0, 4.0, 4.5, 3.3, 5.5, 5.0, 5.3, 3.9)  # typical log(amount)
_CATEGORY_PREFERENCE = (2.0, 1.2, 1.5, 1.2, 0.5, 0.6, 0.3, 0.5, -0.5, -1.2, -2.0, -1.5)  # honest logits

# -- honest behaviour (per card unless noted) --------------------------------------------------

N_COUNTRIES = 30  # country 0 is the card's home
GAP_LOG_MINUTES = (math.log(180), math.log(2880))  # range of a card's typical gap: 3 h .. 2 days
GAP_SIGMA = 1.0  # spread of log(gap) around the card's typical gap
AMOUNT_CARD_SIGMA = 0.5  # spread of a card's amount level, in log units
AMOUNT_TX_SIGMA = 0.7  # spread of one transaction around its card and category
NIGHT_OWL_SHARE = 0.2  # honest cards that happily buy at night
NIGHT_ACCEPT = (0.08, 0.9)  # P(keep a night transaction): ordinary card, night owl
TRAVEL_RATE = 0.10  # upper bound of a card's P(leave home) per transaction
RETURN_HOME = 0.3  # P(come home) per transaction while abroad
TRAVEL_MIN_GAP = (240.0, 1440.0)  # minutes an honest country change takes (uniform)
QUICK_HOP_SHARE = 0.3  # honest country changes that are quick (border towns)
SPREE_SHARE = 0.12  # honest cards with a burst (shopping spree)
SPREE_LENGTH = (3, 6)  # transactions in a spree, inclusive
SPREE_GAP_LOG_MINUTES = (math.log(8), 0.9)  # spree gaps: log-normal (mean, sigma), minutes
BIG_BUY_RATE = 0.03  # P(an honest transaction is a big purchase)
BIG_BUY_FACTOR = (3.0, 10.0)  # how much larger than usual (uniform)
HOME_KM_LOG = (math.log(8), 1.0)  # distance from home while at home: log-normal km
ABROAD_KM_LOG = (math.log(300), math.log(9000))  # a foreign country's distance, log-uniform km

# -- fraud -----------------------------------------------------------------------------------

PATTERN_RATE = 0.35  # P(a fraud card shows each pattern), independently
SILENT_SHARE = 0.2  # fraud cards that show no pattern at all
FRAUD_LENGTH = (1, 3)  # fraudulent transactions at the end, inclusive (no burst)
BURST_LENGTH = (3, 6)  # same, for a burst
BURST_GAP_LOG_MINUTES = (math.log(4), 0.9)  # burst gaps: log-normal (mean, sigma), minutes
NIGHT_HOURS = (2.0, 5.0)  # when night fraud happens, hours (uniform)
JUMP_GAP_LOG_MINUTES = (math.log(60), 0.9)  # gap before a geography jump: log-normal, minutes
SPIKE_FACTOR = (2.0, 10.0)  # amount spike over the card's usual level (uniform)
SPIKE_EACH = 0.7  # P(each fraudulent transaction of a spike card spikes)
ONLINE_FRAUD = 0.8  # P(a spiking transaction is online)

MINUTES_PER_DAY = 1440.0


@dataclass(frozen=True)
class Transactions:
    """Raw card histories: one row per card, one column per transaction, oldest first."""

    amount: torch.Tensor  # [N, L] currency units
    hour: torch.Tensor  # [N, L] hour of day in [0, 24)
    gap_minutes: torch.Tensor  # [N, L] minutes since the card's previous transaction
    category: torch.Tensor  # [N, L] int64 index into CATEGORIES
    country_change: torch.Tensor  # [N, L] bool: a different country from the previous transaction
    abroad: torch.Tensor  # [N, L] bool: not the card's home country
    online: torch.Tensor  # [N, L] bool: card not present
    distance_km: torch.Tensor  # [N, L] distance from the card's home
    is_fraud: torch.Tensor  # [N] bool: the card's last transactions are fraudulent


# -- the generator ---------------------------------------------------------------------------

Shape = tuple[int, ...]


def _uniform(g: torch.Generator, shape: Shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _lognormal(g: torch.Generator, shape: Shape, log_mean: float | torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(log_mean + sigma * torch.randn(shape, generator=g))


def _randint(g: torch.Generator, shape: Shape, low: int, high_inclusive: int) -> torch.Tensor:
    return torch.randint(low, high_inclusive + 1, shape, generator=g)


def _next_time_of_day(t: torch.Tensor, hour: torch.Tensor) -> torch.Tensor:
    """The first moment at or after ``t`` (minutes) whose hour of day is ``hour``."""
    day_start = torch.floor(t / MINUTES_PER_DAY) * MINUTES_PER_DAY
    candidate = day_start + hour * 60.0
    return torch.where(candidate >= t, candidate, candidate + MINUTES_PER_DAY)


def _countries(g: torch.Generator, travel_rate: torch.Tensor, jump: torch.Tensor) -> torch.Tensor:
    """[N, L] country of each transaction (0 = home): honest trips, plus a jump where ``jump`` is set.

    A Markov chain, so it walks one position at a time; every draw is made up front.
    """
    n, length = jump.shape
    leave_draw = torch.rand(n, length, generator=g)
    return_draw = torch.rand(n, length, generator=g)
    foreign = _randint(g, (n, length), 1, N_COUNTRIES - 1)
    country = torch.zeros(n, dtype=torch.long)
    visited = []
    for j in range(length):
        # a jump always lands somewhere new
        destination = torch.where(
            jump[:, j] & (foreign[:, j] == country), foreign[:, j] % (N_COUNTRIES - 1) + 1, foreign[:, j]
        )
        leave = (country == 0) & (leave_draw[:, j] < travel_rate)
        come_home = (country != 0) & (return_draw[:, j] < RETURN_HOME)
        country = torch.where(leave | jump[:, j], destination, torch.where(come_home, 0, country))
        visited.append(country)
    return torch.stack(visited, dim=1)


def _timeline(
    start: torch.Tensor,
    gap: torch.Tensor,
    to_morning: torch.Tensor,
    morning_hour: torch.Tensor,
    to_night: torch.Tensor,
    night_hour: torch.Tensor,
) -> torch.Tensor:
    """[N, L] transaction times in minutes: ``start`` plus the gaps, where a night purchase marked
    ``to_morning`` waits for ``morning_hour`` and one marked ``to_night`` for ``night_hour``;
    a purchase that waits delays every later one, so gaps and hours stay consistent."""
    t = start
    times = []
    for j in range(gap.shape[1]):
        now = t + gap[:, j]
        at_night = torch.remainder(now, MINUTES_PER_DAY) < 6 * 60.0
        now = torch.where(to_morning[:, j] & at_night, _next_time_of_day(now, morning_hour[:, j]), now)
        now = torch.where(to_night[:, j], _next_time_of_day(now, night_hour[:, j]), now)
        times.append(now)
        t = now
    return torch.stack(times, dim=1)


def generate_transactions(n_cards: int, seq_len: int, fraud_rate: float, seed: int) -> Transactions:
    """``n_cards`` card histories of ``seq_len`` transactions; ``round(n_cards * fraud_rate)`` are fraud."""
    g = torch.Generator().manual_seed(seed)
    n, length = n_cards, seq_len
    cards, txs = (n,), (n, length)
    position = torch.arange(length)

    # card profiles: how each honest card behaves
    gap_log_mean = _uniform(g, cards, *GAP_LOG_MINUTES)
    amount_shift = AMOUNT_CARD_SIGMA * torch.randn(cards, generator=g)
    night_owl = torch.rand(cards, generator=g) < NIGHT_OWL_SHARE
    night_accept = torch.where(night_owl, NIGHT_ACCEPT[1], NIGHT_ACCEPT[0])
    travel_rate = _uniform(g, cards, 0.0, TRAVEL_RATE)
    online_rate = _uniform(g, cards, 0.05, 0.5)
    category_logits = torch.tensor(_CATEGORY_PREFERENCE) + torch.randn(n, len(CATEGORIES), generator=g)
    category_cdf = torch.softmax(category_logits, dim=1).cumsum(dim=1)
    country_km = torch.exp(_uniform(g, (N_COUNTRIES,), *ABROAD_KM_LOG))

    # which cards are fraud, and how the fraud shows; an exact count so the rate is what was asked
    n_fraud = max(1, round(n * fraud_rate))
    is_fraud = torch.zeros(n, dtype=torch.bool)
    is_fraud[torch.randperm(n, generator=g)[:n_fraud]] = True
    patterns = torch.rand(n, 4, generator=g) < PATTERN_RATE
    no_pattern = ~patterns.any(dim=1)
    patterns[no_pattern, torch.randint(0, 4, cards, generator=g)[no_pattern]] = True  # at least one ...
    patterns &= torch.rand(n, 1, generator=g) >= SILENT_SHARE  # ... unless silent
    patterns &= is_fraud.unsqueeze(1)
    burst, night, jump, spike = (p.unsqueeze(1) for p in patterns.unbind(dim=1))
    fraud_length = torch.where(burst.squeeze(1), _randint(g, cards, *BURST_LENGTH), _randint(g, cards, *FRAUD_LENGTH))
    fraud_start = torch.where(is_fraud, length - fraud_length, length).unsqueeze(1)
    fraud_now = position >= fraud_start  # [N, L]: this purchase is the fraudster's
    first_fraud = position == fraud_start
    jump_now = jump & first_fraud
    bursting = burst & fraud_now & ~first_fraud

    # honest sprees sit anywhere, including at the end where fraud sits
    spree = ~is_fraud & (torch.rand(cards, generator=g) < SPREE_SHARE)
    spree_length = _randint(g, cards, *SPREE_LENGTH)
    spree_start = torch.where(
        spree, (torch.rand(cards, generator=g) * (length - spree_length + 1).clamp(min=1)).long(), length
    )
    in_spree = (position >= spree_start.unsqueeze(1)) & (position < (spree_start + spree_length).unsqueeze(1))

    # where: honest cards travel slowly; a jump is a new country soon after the last purchase
    country = _countries(g, travel_rate, jump_now)
    previous_country = torch.cat([torch.zeros(n, 1, dtype=torch.long), country[:, :-1]], dim=1)
    changed = country != previous_country
    km = torch.where(
        country == 0,
        _lognormal(g, txs, HOME_KM_LOG[0], HOME_KM_LOG[1]),
        country_km[country] * _uniform(g, txs, 0.8, 1.2),
    )

    # when: a gap after the previous purchase, bent by each pattern
    gap = _lognormal(g, txs, gap_log_mean.unsqueeze(1), GAP_SIGMA)
    gap = torch.where(in_spree, _lognormal(g, txs, *SPREE_GAP_LOG_MINUTES), gap)
    gap = torch.where(jump_now, _lognormal(g, txs, *JUMP_GAP_LOG_MINUTES), gap)
    gap = torch.where(bursting, _lognormal(g, txs, *BURST_GAP_LOG_MINUTES), gap)
    slow_travel = changed & ~jump_now & (torch.rand(txs, generator=g) >= QUICK_HOP_SHARE)
    gap = torch.where(slow_travel, torch.maximum(gap, _uniform(g, txs, *TRAVEL_MIN_GAP)), gap)
    # most honest cards sleep: a night purchase usually waits for the morning; night fraud (not a
    # burst's later purchases, not a jump, which keeps its short gap) waits for the small hours
    sleeps = ~fraud_now & ~in_spree & (torch.rand(txs, generator=g) >= night_accept.unsqueeze(1))
    night_now = night & fraud_now & ~bursting & ~jump_now
    start = _uniform(g, cards, 0.0, 30 * MINUTES_PER_DAY)  # time of the (unseen) previous purchase
    times = _timeline(start, gap, sleeps, _uniform(g, txs, 6.0, 10.0), night_now, _uniform(g, txs, *NIGHT_HOURS))
    gap = torch.diff(times, dim=1, prepend=start.unsqueeze(1))
    hour = torch.remainder(times, MINUTES_PER_DAY) / 60.0

    # what: the card's usual mix; a spike is a big, usually online, purchase in a risky category
    # (inverse-CDF sampling draws like torch.multinomial, several times faster on CPU)
    category = torch.searchsorted(category_cdf, torch.rand(n, length, generator=g)).clamp(max=len(CATEGORIES) - 1)
    spike_now = spike & fraud_now & ((torch.rand(txs, generator=g) < SPIKE_EACH) | (position == length - 1))
    risky_draw = torch.tensor(RISKY)[torch.randint(0, len(RISKY), txs, generator=g)]
    category = torch.where(spike_now, risky_draw, category)
    log_amount = (
        torch.tensor(_CATEGORY_LOG_AMOUNT)[category]
        + amount_shift.unsqueeze(1)
        + AMOUNT_TX_SIGMA * torch.randn(txs, generator=g)
    )
    big_buy = ~fraud_now & (torch.rand(txs, generator=g) < BIG_BUY_RATE)
    log_amount = log_amount + torch.where(big_buy, torch.log(_uniform(g, txs, *BIG_BUY_FACTOR)), 0.0)
    log_amount = log_amount + torch.where(spike_now, torch.log(_uniform(g, txs, *SPIKE_FACTOR)), 0.0)
    risky = torch.isin(category, torch.tensor(RISKY))
    online_p = torch.where(spike_now, ONLINE_FRAUD, (online_rate.unsqueeze(1) + 0.3 * risky).clamp(max=0.95))
    online = torch.rand(txs, generator=g) < online_p

    return Transactions(
        amount=torch.exp(log_amount),
        hour=hour,
        gap_minutes=gap,
        category=category,
        country_change=changed,
        abroad=country != 0,
        online=online,
        distance_km=km,
        is_fraud=is_fraud,
    )


# -- features --------------------------------------------------------------------------------


def _per_transaction(tx: Transactions) -> torch.Tensor:
    """Numeric per-transaction features [N, L, 8], before standardisation."""
    angle = 2 * math.pi * tx.hour / 24.0
    return torch.stack(
        [
            torch.log1p(tx.amount),
            torch.sin(angle),
            torch.cos(angle),
            torch.log1p(tx.gap_minutes),
            tx.country_change.float(),
            tx.abroad.float(),
            tx.online.float(),
            torch.log1p(tx.distance_km),
        ],
        dim=-1,
    )


def _standardiser(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over every axis but the last, from the training split only."""
    flat = train.reshape(-1, train.shape[-1])
    return flat.mean(dim=0), flat.std(dim=0).clamp(min=1e-6)


def sequence_features(train: Transactions, val: Transactions) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L, 8 + n_categories] float tensors: standardised numbers, then one-hot category."""
    numeric_train, numeric_val = _per_transaction(train), _per_transaction(val)
    mean, std = _standardiser(numeric_train)

    def assemble(tx: Transactions, numeric: torch.Tensor) -> torch.Tensor:
        # written in place: one_hot + cat would build two more copies of the largest tensor
        features = torch.zeros(*numeric.shape[:-1], numeric.shape[-1] + len(CATEGORIES))
        torch.div(numeric - mean, std, out=features[..., : numeric.shape[-1]])
        features[..., numeric.shape[-1] :].scatter_(-1, tx.category.unsqueeze(-1), 1.0)
        return features

    return assemble(train, numeric_train), assemble(val, numeric_val)


def _card_summary(tx: Transactions) -> torch.Tensor:
    """Flat per-card features [N, 20]: what an analyst would compute from a card's history."""
    log_amount = torch.log1p(tx.amount)
    gap = tx.gap_minutes
    night = (tx.hour >= 1.0) & (tx.hour < 6.0)
    risky = torch.isin(tx.category, torch.tensor(RISKY))
    # minutes from each transaction to the last one: how many fall in the final hour or day
    to_last = gap.flip(1).cumsum(1).flip(1) - gap[:, -1:]
    recent = 3  # "recent" = the last 3 transactions
    earlier_mean = log_amount[:, :-recent].mean(1) if log_amount.shape[1] > recent else log_amount.mean(1)
    return torch.stack(
        [
            log_amount.mean(1),
            log_amount.std(1, unbiased=False),
            log_amount.max(1).values,
            log_amount[:, -recent:].max(1).values - earlier_mean,
            torch.log1p(gap[:, -recent:].min(1).values),
            torch.log1p(gap.median(1).values),
            (gap < 15).float().sum(1),
            (to_last <= 60).float().sum(1),
            (to_last <= MINUTES_PER_DAY).float().sum(1),
            night.float().mean(1),
            night[:, -recent:].float().sum(1),
            tx.country_change.float().sum(1),
            (tx.country_change & (gap < 180)).float().sum(1),
            tx.abroad[:, -1].float(),
            torch.log1p(tx.distance_km).max(1).values,
            tx.online.float().mean(1),
            tx.online[:, -recent:].float().sum(1),
            risky.float().mean(1),
            risky[:, -recent:].float().sum(1),
            torch.where(risky, log_amount, torch.zeros_like(log_amount)).max(1).values,
        ],
        dim=1,
    )


def card_features(train: Transactions, val: Transactions) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 20] standardised per-card summaries for the MLP."""
    summary_train, summary_val = _card_summary(train), _card_summary(val)
    mean, std = _standardiser(summary_train)
    return (summary_train - mean) / std, (summary_val - mean) / std


# -- metric ----------------------------------------------------------------------------------


def average_precision(output: torch.Tensor, target: torch.Tensor) -> float:
    """Area under the precision-recall curve, as scikit-learn's ``average_precision_score``.

    ``output`` is a score per sample (a logit or a probability: only the order matters), or two
    class logits per sample. Tied scores share one threshold, so their order does not matter.
    NaN when there is no positive or a score is not finite (a diverged model).
    """
    scores = output.detach().float()
    if scores.dim() == 2 and scores.shape[1] == 2:
        scores = scores[:, 1] - scores[:, 0]
    scores = scores.reshape(-1)
    labels = target.detach().reshape(-1).float()
    n_positive = labels.sum()
    if n_positive == 0 or not torch.isfinite(scores).all():
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order]
    true_positives = labels.cumsum(0)
    # every sample takes the precision at the end of its group of tied scores
    group_start = torch.ones_like(scores, dtype=torch.bool)
    group_start[1:] = scores[1:] != scores[:-1]
    group_end = torch.ones_like(group_start)
    group_end[:-1] = group_start[1:]
    end_index = torch.nonzero(group_end).squeeze(1)[group_start.long().cumsum(0) - 1]
    precision = true_positives[end_index] / (end_index + 1).float()
    return float((precision * labels).sum() / n_positive)


# -- models ----------------------------------------------------------------------------------


class FraudGRU(nn.Module):
    """Transaction sequence [B, L, F] -> fraud logit [B]: input projection, one GRU layer, linear head."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.project = nn.Linear(n_features, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last_hidden = self.gru(torch.relu(self.project(x)))
        return self.head(last_hidden[-1]).squeeze(-1)


# -- the built-ins ---------------------------------------------------------------------------


def _check_sizes(samples: int, val_samples: int, seq_len: int, fraud_rate: float, hidden: int) -> None:
    checks = (
        (samples >= 50, f"samples must be at least 50, not {samples}"),
        (val_samples >= 20, f"val_samples must be at least 20, not {val_samples}"),
        (2 <= seq_len <= 1024, f"seq_len must be between 2 and 1024, not {seq_len}"),
        (0.0 < fraud_rate <= 0.5, f"fraud_rate must be in (0, 0.5], not {fraud_rate}"),
        (hidden >= 1, f"hidden must be a positive integer, not {hidden}"),
    )
    for ok, message in checks:
        if not ok:
            raise WorkloadError(f"fraud workload: {message}")


@contextlib.contextmanager
def _one_thread():
    """Generating is many small element-wise operations: on a busy machine, torch's extra intra-op
    threads cost more in waking and waiting than they save (fraud-gru took 7.5 s with two threads and
    1.4 s with one on a loaded 2-core machine). The draws, and so the data, are the same either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _generate_splits(
    samples: int, val_samples: int, seq_len: int, fraud_rate: float, seed: int
) -> tuple[Transactions, Transactions]:
    # separate streams per split (2·seed, 2·seed + 1) so resizing one split leaves the other as is
    train = generate_transactions(samples, seq_len, fraud_rate, seed=2 * seed)
    val = generate_transactions(val_samples, seq_len, fraud_rate, seed=2 * seed + 1)
    return train, val


def _binary_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output, target)


def fraud_gru(
    samples: int = 50_000,
    val_samples: int = 10_000,
    seq_len: int = 16,
    fraud_rate: float = 0.03,
    seed: int = 0,
    hidden: int = 64,
) -> Workload:
    """Synthetic card-transaction sequences with planted fraud patterns; a small GRU classifier."""
    _check_sizes(samples, val_samples, seq_len, fraud_rate, hidden)
    with _one_thread():
        train, val = _generate_splits(samples, val_samples, seq_len, fraud_rate, seed)
        x_train, x_val = sequence_features(train, val)
    return _fraud_workload(
        "fraud-gru",
        functools.partial(FraudGRU, x_train.shape[-1], hidden),
        x_train,
        x_val,
        train,
        val,
        f"{samples} card histories of {seq_len} transactions, {fraud_rate:.1%} fraud; "
        f"GRU (hidden {hidden}) on the sequence",
    )


def fraud_mlp(
    samples: int = 50_000,
    val_samples: int = 10_000,
    seq_len: int = 16,
    fraud_rate: float = 0.03,
    seed: int = 0,
    hidden: int = 128,
) -> Workload:
    """The fraud-gru data aggregated into per-card features; an MLP classifier (faster than the GRU)."""
    _check_sizes(samples, val_samples, seq_len, fraud_rate, hidden)
    with _one_thread():
        train, val = _generate_splits(samples, val_samples, seq_len, fraud_rate, seed)
        x_train, x_val = card_features(train, val)
    return _fraud_workload(
        "fraud-mlp",
        functools.partial(MLP, x_train.shape[-1], hidden, 1),
        x_train,
        x_val,
        train,
        val,
        f"{samples} card histories of {seq_len} transactions, {fraud_rate:.1%} fraud, "
        f"aggregated per card; MLP (hidden {hidden})",
    )


def _fraud_workload(
    name: str, model, x_train: torch.Tensor, x_val: torch.Tensor, train, val, description: str
) -> Workload:
    """What both fraud workloads share: the labels, the loss, the baseline and the metric."""
    return Workload(
        name=name,
        model=model,
        train=(x_train, train.is_fraud.float()),
        val=(x_val, val.is_fraud.float()),
        loss=_binary_loss,
        baseline_batch_size=128,
        baseline_lr=1e-3,
        optimizer="adam",
        metrics={"average_precision": average_precision},
        primary_metric="average_precision",
        primary_metric_mode="max",
        epochs=10,
        description=description,
    )
