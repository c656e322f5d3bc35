"""Sparsity stage: tile classification read off the mask before anything runs.

A kernel program owns a tile of *outer* positions [first, last] (query positions in the forward
and dQ kernels; key positions in the dK/dV kernel) and loops over tiles of *inner* positions. For
every mask node this stage derives, in closed form, a `Range` of inner positions:

    visit [lo, hi)           outside it the node is false for every outer position: EMPTY tiles
    full  [full_lo, full_hi)  inside it the node is true for every outer position: FULL tiles
    gap   [gap_lo, gap_hi)    inside visit, false for every outer position: the space between
                              the parts of a union that do not touch (sinks beside a window)

and emits Triton statements that compute both per program (no tensors, no setup call). The kernel
skips tiles outside `visit`, runs tiles inside `full` with no mask math and no bounds checks, and
evaluates the mask on the rest (PARTIAL). Rules:

    linear comparisons   a·kv + c·q + e  op  0  with a, c in {-1, 0, 1} and e free of q, kv
                         (causal, window, prefix, sinks, per-batch or per-head bounds): exact
    chunks               q // n == kv // n: exact
    documents            T[b, q] == T[b, kv] with T of shape [B, KV]: the kernels read runs of
                         equal ids (`runs`, O(N), built per call by a small kernel); exact when
                         the ids never decrease, every tile PARTIAL when they do
    & | !                intersection; union (parts that do not touch leave a gap, which the
                         kernels skip; one gap per mask, further ones visited); negation pushed
                         to the comparisons
    anything else        visit everything, nothing FULL (always correct)

Intersections are exact for the forms above combined with each other (the band of a window, a
chunk or a document under causal), which the property tests check against dense evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from . import ir
from .ir import INT
from .lower import INT32, POSITION_LIMIT, Lowerer

BIG = "BIG"  # a module constant of the generated code (2**30): an unbounded end
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


@dataclass(frozen=True)
class Range:
    """Inner positions of one mask node for a tile of outer positions (Triton text, None =
    unbounded); ``full_empty`` when no position is known to be true for the whole tile."""

    lo: str | None = None
    hi: str | None = None
    full_lo: str | None = None
    full_hi: str | None = None
    full_empty: bool = False
    # a condition on the outer tile alone: true for some / every outer position (then the
    # bounds above are where(some, BIG, -BIG) and where(every, BIG, -BIG))
    some: str | None = None
    every: str | None = None
    # positions inside [lo, hi) that no outer position of the tile sees: the space between the
    # two parts of a union that do not touch (attention sinks beside a window); None: no gap
    gap_lo: str | None = None
    gap_hi: str | None = None


UNKNOWN = Range(full_empty=True)


@dataclass(frozen=True)
class View:
    """Which axis the kernel loops over: ``inner`` positions for a tile of ``outer`` positions."""

    inner: str  # "kv" or "q"
    outer: str
    first: str  # Triton names of the tile's first and last outer positions
    last: str


FORWARD = View("kv", "q", "first_q", "last_q")
TRANSPOSED = View("q", "kv", "first_kv", "last_kv")


@dataclass(frozen=True)
class Sparsity:
    """What the templates need: the range statements for both views and the document tables."""

    key_range: str  # statements setting lo, full_lo, full_hi, hi, gap_lo, gap_hi (key positions)
    # per query tile
    query_range: str  # the same (query positions) per key tile, for the dK/dV kernel
    documents: tuple[str, ...]  # params whose runs the kernels read (`doc_runs_T`, `doc_sorted_T`)
    # top-level conjuncts of the mask that the kernels may decide by runs, by their index in the
    # conjunction: a document whose ids are sorted (in this batch row) keeps, for query q,
    # exactly the keys of q's run (and for key kv, exactly the queries of kv's run). key_range
    # and query_range then set `decided` (a scalar: every such table is sorted) and row_runs /
    # key_runs load the runs of the tile's queries / keys, so PARTIAL tiles test positions
    # against them instead of reading ids (forward and dQ by the queries', dK/dV by the keys')
    decided: tuple[int, ...]
    # statements setting run_lo, run_hi: per query row (positions q_pos, a vector in the kernel),
    # the run of equal ids holding it in every decided table (their intersection); "" when none
    row_runs: str
    # the same per key (kv_pos) for the dK/dV kernel, whose query_range sets its own `decided`
    key_runs: str
    # the mask less the decided conjuncts (what a decided tile still tests; `true` when nothing is
    # left), None when none is decided
    undecided: ir.Expr | None
    exact: bool  # every node is one of the exact forms (the tests compare tiles for equality)


def _max(a: str | None, b: str | None, none_wins: bool) -> str | None:
    if a is None or b is None:
        return None if none_wins else (b if a is None else a)
    return f"tl.maximum({a}, {b})"


def _min(a: str | None, b: str | None, none_wins: bool) -> str | None:
    if a is None or b is None:
        return None if none_wins else (b if a is None else a)
    return f"tl.minimum({a}, {b})"


@dataclass
class _Linear:
    """a_q·q + a_kv·kv + const + Σ sign·term, terms free of q and kv."""

    a_q: int = 0
    a_kv: int = 0
    const: int = 0
    terms: tuple[tuple[int, ir.Expr], ...] = ()

    def scaled(self, k: int) -> _Linear:
        return _Linear(k * self.a_q, k * self.a_kv, k * self.const,
                       tuple((k * s, t) for s, t in self.terms))

    def plus(self, other: _Linear) -> _Linear:
        return _Linear(self.a_q + other.a_q, self.a_kv + other.a_kv, self.const + other.const,
                       self.terms + other.terms)


def _uses(e: ir.Expr, names: set[str]) -> bool:
    return any(isinstance(n, ir.Name) and n.id in names for n in ir.walk(e))


def _linear(e: ir.Expr) -> _Linear | None:
    if e.ty != INT:
        return None
    if isinstance(e, ir.IntLit):
        return _Linear(const=e.value)
    if isinstance(e, ir.Name) and e.id in ("q", "kv"):
        return _Linear(a_q=int(e.id == "q"), a_kv=int(e.id == "kv"))
    if not _uses(e, {"q", "kv", "score"}):
        return _Linear(terms=((1, e),))
    if isinstance(e, ir.Unary) and e.op == "-":
        inner = _linear(e.operand)
        return inner.scaled(-1) if inner else None
    if isinstance(e, ir.Binary) and e.op in ("+", "-"):
        a, b = _linear(e.left), _linear(e.right)
        if a is None or b is None:
            return None
        return a.plus(b if e.op == "+" else b.scaled(-1))
    if isinstance(e, ir.Binary) and e.op == "*":
        for lit, other in ((e.left, e.right), (e.right, e.left)):
            if isinstance(lit, ir.IntLit):
                inner = _linear(other)
                return inner.scaled(lit.value) if inner else None
    return None


def _is_name(e: ir.Expr, name: str) -> bool:
    return isinstance(e, ir.Name) and e.id == name


class _Analysis:
    def __init__(self, attention: ir.Attention, view: View):
        self.attention = attention
        self.view = view
        self.lower = Lowerer(attention)
        self.lines: list[str] = []
        self.documents: list[str] = []
        self.top: ir.Expr | None = None  # the top-level conjunct being analysed
        self.decided: list[tuple[int, str, str]] = []  # (conjunct index, when, table)
        self.index = -1
        self.exact = True
        self._temps = 0

    def temp(self, text: str, hint: str) -> str:
        self._temps += 1
        name = f"{hint}{self._temps}"
        self.lines.append(f"{name} = {text}")
        return name

    # ---- nodes ---------------------------------------------------------------------------
    def range(self, e: ir.Expr, negate: bool = False) -> Range:
        if isinstance(e, ir.BoolLit):
            keeps = e.value != negate
            return Range() if keeps else Range(hi=f"-{BIG}", full_empty=True)
        if isinstance(e, ir.Unary) and e.op == "!":
            return self.range(e.operand, not negate)
        if isinstance(e, ir.Binary) and e.op in ("&", "|"):
            a, b = self.range(e.left, negate), self.range(e.right, negate)
            return self.both(a, b) if (e.op == "&") != negate else self.either(a, b)
        if isinstance(e, ir.Binary) and e.op in ir.COMPARISONS:
            op = _NEGATE[e.op] if negate else e.op
            found = self.chunk(e, op) or self.document(e, op) or self.comparison(e, op)
            if found is not None:
                return found
        self.exact = False
        return UNKNOWN

    def comparison(self, e: ir.Binary, op: str) -> Range | None:
        if e.left.ty != INT or e.right.ty != INT:
            return None
        left, right = _linear(e.left), _linear(e.right)
        if left is None or right is None:
            return None
        form = left.plus(right.scaled(-1))  # form op 0
        a_in = form.a_kv if self.view.inner == "kv" else form.a_q
        a_out = form.a_q if self.view.inner == "kv" else form.a_kv
        if a_in not in (-1, 0, 1) or a_out not in (-1, 0, 1):
            return None
        if a_in == 0:
            return self.tile_condition(form, a_out, op)
        # a_in·inner + a_out·outer + rest op 0  ⇒  inner op' c·outer + e
        if a_in < 0:
            op = _FLIP[op]
        c = -a_out * a_in
        rest = form.scaled(-a_in)
        rest.a_q = rest.a_kv = 0
        if op == "!=":
            return None
        if op in ("<", ">"):
            rest.const += -1 if op == "<" else 1
            op += "="
        first, last = self.view.first, self.view.last
        if c == 0:
            bmin = bmax = self.scalar(rest)
        elif c > 0:
            bmin, bmax = self.scalar(rest, first), self.scalar(rest, last)
        else:
            bmin, bmax = self.scalar(rest, f"-{last}"), self.scalar(rest, f"-{first}")
        rest.const += 1
        after_max = self.scalar(rest, last if c > 0 else f"-{first}") if c else self.scalar(rest)
        after_min = self.scalar(rest, first if c > 0 else f"-{last}") if c else self.scalar(rest)
        if op == "<=":
            return Range(hi=after_max, full_hi=after_min)
        if op == ">=":
            return Range(lo=bmin, full_lo=bmax)
        return Range(lo=bmin, hi=after_max, full_lo=bmax, full_hi=after_min)

    def tile_condition(self, form: _Linear, a_out: int, op: str) -> Range:
        """A condition on the outer position alone (or on neither): all, some or none of the tile."""
        if a_out == 0:
            text = f"{self.scalar(form)} {op} 0"
            some = every = self.temp(text, "cond")
        else:
            if a_out < 0:
                op = _FLIP[op]
            rest = form.scaled(-a_out)
            rest.a_q = rest.a_kv = 0
            e_text = self.scalar(rest)  # outer op e_text
            first, last = self.view.first, self.view.last
            some = {"<=": f"{first} <= {e_text}", "<": f"{first} < {e_text}",
                    ">=": f"{last} >= {e_text}", ">": f"{last} > {e_text}",
                    "==": f"({first} <= {e_text}) & ({e_text} <= {last})",
                    "!=": f"({first} != {e_text}) | ({last} != {e_text})"}[op]
            every = {"<=": f"{last} <= {e_text}", "<": f"{last} < {e_text}",
                     ">=": f"{first} >= {e_text}", ">": f"{first} > {e_text}",
                     "==": f"({first} == {e_text}) & ({last} == {e_text})",
                     "!=": f"({e_text} < {first}) | ({e_text} > {last})"}[op]
        return Range(hi=f"tl.where({some}, {BIG}, -{BIG})",
                     full_hi=f"tl.where({every}, {BIG}, -{BIG})", some=some, every=every)

    def chunk(self, e: ir.Binary, op: str) -> Range | None:
        """``q // n == kv // n``: the outer tile's chunks."""
        if op != "==" or not all(isinstance(s, ir.Binary) and s.op == "//"
                                 for s in (e.left, e.right)):
            return None
        names = {e.left.left.id if isinstance(e.left.left, ir.Name) else None,
                 e.right.left.id if isinstance(e.right.left, ir.Name) else None}
        n = e.left.right
        if names != {"q", "kv"} or n != e.right.right or _uses(n, {"q", "kv", "score"}):
            return None
        n_text = self.lower(n)
        first, last = self.view.first, self.view.last
        c_first = self.temp(f"_floor_div({first}, {n_text})", "chunk")
        c_last = self.temp(f"_floor_div({last}, {n_text})", "chunk")
        lo = self.temp(f"{c_first} * {n_text}", "chunk_lo")
        hi = self.temp(f"({c_last} + 1) * {n_text}", "chunk_hi")
        return Range(lo=lo, hi=hi, full_lo=lo,
                     full_hi=f"tl.where({c_first} == {c_last}, {hi}, -{BIG})")

    def document(self, e: ir.Binary, op: str) -> Range | None:
        """``T[b, q] == T[b, kv]``: runs of equal ids (whole documents when the ids never
        decrease) bound the inner positions; unsorted ids or negative positions visit all."""
        if op != "==" or not (isinstance(e.left, ir.Index) and isinstance(e.right, ir.Index)):
            return None
        table = e.left.param
        if e.right.param != table or self.attention.param(table).dims != ("B", "KV"):
            return None
        (b1, x1), (b2, x2) = e.left.indices, e.right.indices
        positions = {x1.id if isinstance(x1, ir.Name) else None,
                     x2.id if isinstance(x2, ir.Name) else None}
        if not (_is_name(b1, "b") and _is_name(b2, "b")) or positions != {"q", "kv"}:
            return None
        if table not in self.documents:
            self.documents.append(table)
        first, last = self.view.first, self.view.last
        # Query positions below 0 (q_len > kv_len) read id 0, which may be anywhere: a query tile
        # holding one visits every key; a key tile visits all such queries.
        runs = f"doc_runs_{table} + off_b * 2 * runs_len"
        ok = self.temp(f"tl.load(doc_sorted_{table} + off_b) != 0", "doc_sorted")
        if self.view.outer == "q":
            ok = self.temp(f"{ok} & ({first} >= 0)", "doc_ok")
            ok_lo = ok
        else:
            ok_lo = self.temp(f"{ok} & (kv_len >= q_len)", "doc_ok")
        start = self.temp(f"tl.load({runs} + tl.maximum({first}, 0))", "doc_start")
        end_first = self.temp(f"tl.load({runs} + runs_len + tl.maximum({first}, 0))", "doc_end")
        end_last = self.temp(f"tl.load({runs} + runs_len + tl.maximum({last}, 0))", "doc_end")
        if e is self.top:  # sorted ids: each outer position keeps exactly its own run
            self.decided.append((self.index, ok_lo, table))
        return Range(lo=f"tl.where({ok_lo}, {start}, -{BIG})",
                     hi=f"tl.where({ok}, {end_last}, {BIG})", full_lo=start,
                     full_hi=f"tl.where({ok} & ({end_first} > {last}), {end_first}, -{BIG})")

    # ---- combinations --------------------------------------------------------------------
    def both(self, a: Range, b: Range) -> Range:
        gapped = a if a.gap_lo is not None else b  # one gap is kept: visiting more is correct
        return Range(_max(a.lo, b.lo, False), _min(a.hi, b.hi, False),
                     _max(a.full_lo, b.full_lo, False), _min(a.full_hi, b.full_hi, False),
                     a.full_empty or b.full_empty, gap_lo=gapped.gap_lo, gap_hi=gapped.gap_hi)

    def either(self, a: Range, b: Range) -> Range:
        if a.some is not None or b.some is not None:  # a tile condition, or the other range
            cond, other = (a, b) if a.some is not None else (b, a)
            pick = lambda c, end, value: None if value is None else \
                f"tl.where({c}, {end}{BIG}, {value})"  # noqa: E731
            return Range(pick(cond.some, "-", other.lo), pick(cond.some, "", other.hi),
                         None if other.full_empty else pick(cond.every, "-", other.full_lo),
                         pick(cond.every, "", other.full_hi) if not other.full_empty else cond.full_hi)
        visit = dict(lo=_min(a.lo, b.lo, True), hi=_max(a.hi, b.hi, True))
        if a.gap_lo is None and b.gap_lo is None:
            # between the part that ends first and the part that starts last, when they do not
            # overlap (the kernels check); parts with gaps of their own: the hull
            gap_lo, gap_hi = _min(a.hi, b.hi, False), _max(a.lo, b.lo, False)
            if gap_lo is not None and gap_hi is not None:
                visit.update(gap_lo=gap_lo, gap_hi=gap_hi)
        if a.full_empty or b.full_empty:
            full = b if a.full_empty else a
            return Range(**visit, full_lo=full.full_lo, full_hi=full.full_hi,
                         full_empty=a.full_empty and b.full_empty)
        if a.full_lo is None and b.full_lo is None:  # both reach down: the union is one interval
            return Range(**visit, full_hi=_max(a.full_hi, b.full_hi, True))
        if a.full_hi is None and b.full_hi is None:
            return Range(**visit, full_lo=_min(a.full_lo, b.full_lo, True))
        # general: the union when the two touch, else the longer one (counted from position 0:
        # sinks [-BIG, n) are short)
        a_lo, a_hi = a.full_lo or f"-{BIG}", a.full_hi or BIG
        b_lo, b_hi = b.full_lo or f"-{BIG}", b.full_hi or BIG
        touch = self.temp(f"tl.maximum({a_lo}, {b_lo}) <= tl.minimum({a_hi}, {b_hi})", "touch")
        a_longer = self.temp(f"({a_hi}) - tl.maximum({a_lo}, 0) >= ({b_hi}) - tl.maximum({b_lo}, 0)",
                             "longer")
        return Range(**visit,
                     full_lo=f"tl.where({touch}, tl.minimum({a_lo}, {b_lo}), "
                             f"tl.where({a_longer}, {a_lo}, {b_lo}))",
                     full_hi=f"tl.where({touch}, tl.maximum({a_hi}, {b_hi}), "
                             f"tl.where({a_longer}, {a_hi}, {b_hi}))")

    def scalar(self, form: _Linear, outer: str | None = None) -> str:
        """Triton text of ``outer + Σ sign·term + const`` (outer may start with a minus); an
        argument or a comparison operand as it stands (callers parenthesise for ``&``)."""
        parts = [outer] if outer else []
        for sign, term in form.terms:
            text = self.lower(term)
            text = text if text.replace("_", "").isalnum() else f"({text})"
            parts.append(text if sign == 1 else f"-{text}" if sign == -1 else f"{sign} * {text}")
        if form.const or not parts:
            parts.append(str(form.const))
        if not self._fits_int32(form, outer):
            # a huge literal or an i32 param can take the bound out of int32: sum in int64, then
            # clamp to +-BIG (beyond every position: the same bound) and return to int32
            parts.insert(0, "tl.full([], 0, tl.int64)")
        text = parts[0]
        for part in parts[1:]:
            text += f" - {part[1:]}" if part.startswith("-") else f" + {part}"
        if not self._fits_int32(form, outer):
            text = f"tl.minimum(tl.maximum({text}, -{BIG}), {BIG}).to(tl.int32)"
        return text

    def _fits_int32(self, form: _Linear, outer: str | None) -> bool:
        """Whether ``outer + terms + const`` stays in int32 (outer: a position, |.| < 2**29)."""
        lo = hi = form.const
        if outer:
            lo, hi = lo - POSITION_LIMIT, hi + POSITION_LIMIT
        for sign, term in form.terms:
            t_lo, t_hi = self.lower.int_range(term)
            t_lo, t_hi = sorted((sign * t_lo, sign * t_hi))
            lo, hi = lo + t_lo, hi + t_hi
        return INT32[0] <= lo and hi <= INT32[1]

    # ---- statements ----------------------------------------------------------------------
    def statements(self, mask: ir.Expr) -> str:
        """lo, full_lo, full_hi, hi, gap_lo, gap_hi: one update per top-level conjunct, with its
        spec text."""
        self.lines += ["lo = -BIG", "full_lo = -BIG", "full_hi = BIG", "hi = BIG",
                       "gap_lo = BIG", "gap_hi = -BIG"]
        full_empty = gapped = False
        for index, conjunct in enumerate(_conjuncts(mask)):
            if isinstance(conjunct, ir.BoolLit) and conjunct.value:
                continue
            self.lines.append(f"# {ir.unparse(conjunct)}")
            self.top, self.index = conjunct, index
            r = self.range(conjunct)
            for field, fn in (("lo", "maximum"), ("full_lo", "maximum"), ("full_hi", "minimum"),
                              ("hi", "minimum")):
                value = getattr(r, field)
                if value is not None:
                    self.lines.append(f"{field} = tl.{fn}({field}, {value})")
            if r.gap_lo is not None and not gapped:  # one gap is tracked: more are visited
                self.lines += [f"gap_lo = {r.gap_lo}", f"gap_hi = {r.gap_hi}"]
                gapped = True
            full_empty |= r.full_empty
        if full_empty:
            self.lines += ["# not every part of the mask has a closed form: no FULL tiles",
                           "full_hi = -BIG"]
        if self.decided:
            inner, outer, runs = ("keys", "queries", "row_runs") if self.view is FORWARD \
                else ("queries", "keys", "key_runs")
            self.lines += [f"# sorted ids in each document: PARTIAL tiles test {inner} against the",
                           f"# runs of their {outer} ({runs}) instead of reading ids",
                           "decided = " + " & ".join(f"({d})" for _, d, _ in self.decided)]
        return "\n".join(self.lines)

    def runs(self) -> str:
        """Statements setting run_lo, run_hi [the tile's outer positions, q_pos or kv_pos]:
        each outer position's run in every decided table (positions outside [0, runs_len) read
        a clamped one: decided excludes negative query positions, and those past the end are
        padding)."""
        if not self.decided:
            return ""
        pos = "q_pos" if self.view is FORWARD else "kv_pos"
        rows = "q_rows" if self.view is FORWARD else "kv_rows"
        lines = [f"{rows} = tl.minimum(tl.maximum({pos}, 0), runs_len - 1)"]
        for i, (_, _, table) in enumerate(self.decided):
            runs = f"doc_runs_{table} + off_b * 2 * runs_len + {rows}"
            lo, hi = f"tl.load({runs})", f"tl.load({runs} + runs_len)"
            if i:
                lo, hi = f"tl.maximum(run_lo, {lo})", f"tl.minimum(run_hi, {hi})"
            lines += [f"run_lo = {lo}", f"run_hi = {hi}"]
        return "\n".join(lines)


def _conjuncts(e: ir.Expr):
    if isinstance(e, ir.Binary) and e.op == "&":
        yield from _conjuncts(e.left)
        yield from _conjuncts(e.right)
    else:
        yield e


def analyse(attention: ir.Attention) -> Sparsity:
    forward, transposed = _Analysis(attention, FORWARD), _Analysis(attention, TRANSPOSED)
    key_range = forward.statements(attention.mask)
    query_range = transposed.statements(attention.mask)
    decided = tuple(d[0] for d in forward.decided)
    undecided = None
    if decided:
        rest = [c for i, c in enumerate(_conjuncts(attention.mask)) if i not in decided]
        undecided = functools.reduce(lambda a, b: ir.Binary("&", a, b, ty="bool"), rest) \
            if rest else ir.BoolLit(True, ty="bool")
    return Sparsity(key_range, query_range, tuple(forward.documents), decided, forward.runs(),
                    transposed.runs(), undecided, forward.exact and transposed.exact)
