"""One training step replayed from the model's shapes: forward, backward, optimizer step.

Each function below mirrors one piece of the model code (``models/blocks.py``, ``output.py``,
``moe.py``, ``reversible.py``, ``schemes.py``) and books what it allocates and when it lets go
on a ``Timeline``. The rules are PyTorch's, read off its autograd formulas and checked against
per-op traces of live tensors (tests/test_plan.py compares the replay with such a trace):

* forward: an op's output lives while a variable or a saved-tensor slot holds it; what an op
  saves (``saved.py``) is held by its node until that node's backward has run;
* backward: a node receives its output's gradient, makes gradients for its inputs (and its
  parameters, which stay: ``.grad``), and lets go of its saved tensors and the incoming
  gradient; an input reached by two gradients sums them (a new tensor, unless the first is
  held by nobody else, when the engine adds in place);
* Linear's backward makes the input gradient, then the weight's; under autocast both are made
  in bf16/fp16 and cast back to the float32 of the input and the parameter;
* attention's backward makes dq, dk, dv, which the split of the fused qkv product then
  concatenates into one gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from revbench.models.config import INPLACE_ROWS
from revbench.plan.dims import INT64, MMAP_THRESHOLD, Dims
from revbench.plan.params import (
    block_shapes,
    charged,
    grad_bytes,
    optimizer_step_transient,
    root_shapes,
)
from revbench.plan.timeline import Buf, Timeline


class Step:
    """The replay of one training step on a ``Timeline``; ``param_grads`` accumulates the
    bytes of parameter gradients as they are made (they stay until the optimizer step)."""

    def __init__(self, D: Dims, tl: Timeline) -> None:
        self.D, self.tl = D, tl
        self.casts: list[Buf] = []  # autocast's cache of weight casts, dropped at forward end
        self.early_stop = False  # checkpointing's recompute stops after its last saved tensor
        # the module's input is bf16/fp16 already under autocast (RevFFN's adapters lift the
        # halves to width d in bf16, so its norms, projections and FFN read bf16): no input
        # casts, norms in bf16 out, input gradients in bf16
        self.low = False
        self.saving = True  # False: a forward that keeps nothing for backward (checkpointed
        # blocks, the reversible Function's forward): saved-only tensors die at once
        # FSDP2 (``measure/parallel.py``): the whole parameters of the blocks being computed,
        # whole gradients awaiting reduce-scatter (DDP's buckets are booked by replay_step)
        self.whole: Buf | None = None
        self.block_grads: list[Buf] = []
        self.in_flight: Buf | None = None
        # recompute_chunk_seqs: the parameter gradients of a later slice, summed into the
        # first slice's and then freed (None: gradients are the parameters' .grad)
        self.slice_grads: list[Buf] | None = None
        self.block_bytes = D.s * sum(block_shapes(D.cfg))
        self.root_bytes = D.s * sum(root_shapes(D.cfg))

    # --- parameters and gradients -----------------------------------------------------------

    def param_grad(self, n_params: int, name: str) -> None:
        """A parameter's gradient: float32 (bf16 made first under autocast, then cast)."""
        D, tl = self.D, self.tl
        if D.autocast:
            tl.temp(2 * n_params, f"{name} grad (bf16)")
        grad = tl.new(D.s * n_params, f"{name} grad")  # stays: .grad
        if self.slice_grads is not None:  # a later slice's: added into the first's, then gone
            self.slice_grads.append(grad)
            return
        if D.parallel == "fsdp":
            self.block_grads.append(grad)

    # --- FSDP2: whole parameters around a block, gradients reduce-scattered -------------------

    def unshard(self) -> None:
        """A block's parameters all-gathered, and the next one's in flight (FSDP2 prefetch)."""
        if self.D.parallel == "fsdp":
            # gloo: the next block's all-gather, in flight, also holds a staged copy
            blocks = 3 if self.D.gloo_staging else 2
            self.whole = self.tl.new(blocks * self.block_bytes, "unsharded blocks")

    def reshard(self) -> None:
        if self.whole is not None:
            self.tl.drop(self.whole)
            self.whole = None

    def reduce_scatter(self) -> None:
        """A block's whole gradients averaged and scattered: its shards stay, the whole ones
        go once copied into the collective's send buffer, which lives until the next block's
        reduce-scatter starts (one in flight)."""
        D, tl = self.D, self.tl
        if D.parallel != "fsdp":
            return
        total = sum(g.nbytes for g in self.block_grads)
        staged = 2 if D.gloo_staging else 1  # gloo stages the send buffer while in flight
        send = tl.new(staged * total, "reduce-scatter send buffer")
        tl.new(-(-total // D.world_size), "gradient shards")
        tl.drop(*self.block_grads, self.in_flight)
        self.block_grads, self.in_flight = [], send
        self.reshard()

    # --- what autograd keeps ----------------------------------------------------------------

    def save(self, *bufs: Buf | None) -> None:
        """Autograd keeps these for backward (when this forward keeps anything)."""
        if self.saving:
            self.tl.hold(*bufs)

    def kept(self, buf: Buf) -> Buf | None:
        """``buf``, made by the forward for its backward only: kept when saving, else gone
        now (its variable's reference was the only one)."""
        if self.saving:
            return buf
        self.tl.drop(buf)
        return None

    def saved_new(self, nbytes: int, name: str) -> Buf | None:
        """A tensor an op makes only for its backward (statistics, log-sum-exp, a cast)."""
        if self.saving:
            return self.tl.new(nbytes, name)
        self.tl.temp(nbytes, name)
        return None

    def grad_for_branch(self, g: Buf, cast_bytes: int, name: str) -> Buf:
        """``g`` as a bf16 branch's backward takes it: under autocast a bf16 copy
        (``cast_bytes``), else ``g`` itself with one more holder (the backward lets go of it)."""
        if self.D.autocast:
            return self.tl.new(cast_bytes, name)
        self.tl.hold(g)
        return g

    def vjp_grad(self, g: Buf, cast_bytes: int, name: str) -> Buf:
        """The gradient a reversible step's VJP hands to its branch (``Recompute.vjp``), with
        two holders: the branch's backward lets go of one, the VJP's argument tuple keeps the
        other until ``autograd.grad`` returns (the caller drops it then)."""
        b = self.grad_for_branch(g, cast_bytes, name)
        self.tl.hold(b)
        return b

    # --- Linear -----------------------------------------------------------------------------

    def linear(
        self,
        x: Buf,
        rows: int,
        n_in: int,
        n_out: int,
        name: str,
        weight_cast: bool = True,
        cast: bool = True,
        last: bool = False,
    ) -> tuple[Buf, list[Buf]]:
        """(output, saved) of ``x @ W^T`` on ``rows`` rows (``last``: the block's last saving
        op, whose output a checkpoint's recompute never makes). The caller keeps its own
        reference to ``x``. Under autocast the input is cast (``cast``: it is float32; a bf16
        input is used as is) and the weight's cast comes from autocast's cache
        (``weight_cast``: this Linear's weight is a parameter)."""
        D, tl = self.D, self.tl
        saved: list[Buf | None]
        if D.autocast:
            if cast and not self.low:
                saved = [self.saved_new(2 * rows * n_in, f"{name} input cast")]
            else:
                self.save(x)
                saved = [x]
            if weight_cast:
                wc = tl.new(2 * n_in * n_out, f"{name} weight cast")
                self.casts.append(wc)  # the cache's reference
                self.save(wc)
                saved.append(wc)
            out_bytes = 2 * rows * n_out
        else:
            self.save(x)
            saved = [x]
            out_bytes = D.s * rows * n_out
        if last and self.early_stop:  # the recompute stops once this Linear has saved
            return tl.new(0, f"{name} output (not recomputed)"), saved
        return tl.new(out_bytes, f"{name} output"), saved

    def linear_back(
        self,
        g: Buf,
        saved: list[Buf],
        rows: int,
        n_in: int,
        n_out: int,
        name: str,
        input_fp32: bool = True,
        bias: bool = False,
    ) -> Buf:
        """The input's gradient (then the weight's, then the bias's: ``bias``, summed over the
        rows by autograd, on CUDA through a scratch buffer); lets go of ``saved`` and ``g``."""
        D, tl = self.D, self.tl
        if D.autocast:
            gi = tl.new(2 * rows * n_in, f"{name} input grad (bf16)")
        else:
            gi = tl.new(D.s * rows * n_in, f"{name} input grad")
        if bias:
            tl.temp(D.bias_grad_scratch(rows, n_out), f"{name} bias grad sum's buffer")
        self.param_grad(n_in * n_out, name)
        tl.drop(*saved, g)
        if D.autocast and input_fp32 and not self.low:  # the cast's backward: to the float32 input
            g32 = tl.new(4 * rows * n_in, f"{name} input grad")
            tl.drop(gi)
            return g32
        return gi

    # --- norms ------------------------------------------------------------------------------

    def norm(self, x: Buf, name: str) -> tuple[Buf, list[Buf]]:
        """LayerNorm (fused) or RMSNorm (composite: x^2, mean, rsqrt, x * rstd, * weight).

        On a bf16 input under autocast (``self.low``) LayerNorm runs in bf16 (its output
        bf16), and RMSNorm's composite works on a float32 upcast of the input (the copy its
        products save) and casts its output back to bf16."""
        D, tl = self.D, self.tl
        low = self.low and D.autocast
        if not D.llama:
            self.save(x)
            out = tl.new(D.a * D.N * D.d if low else D.slot, f"{name} output")
            return out, [x, self.saved_new(2 * D.st * D.N, f"{name} mean, rstd")]
        src = tl.new(D.slot, f"{name} input upcast") if low else x  # slot: float32 here
        self.save(src)
        sq = tl.new(D.slot, f"{name} x^2")
        ms = tl.new(D.st * D.N, f"{name} mean")
        tl.drop(sq)
        rstd = tl.new(D.st * D.N, f"{name} rstd")
        tl.drop(ms)
        xn = tl.new(D.slot, f"{name} normalised")
        out = tl.new(D.slot, f"{name} output")
        self.save(rstd, xn)
        tl.drop(rstd, xn)
        if low:
            cast = tl.new(D.a * D.N * D.d, f"{name} output (bf16)")
            tl.drop(out, src)
            out = cast
        return out, [src, rstd, xn]

    def norm_back(self, g: Buf, saved: list[Buf], name: str) -> Buf:
        """The norm's input gradient (bf16 for a bf16 input: ``norm``)."""
        D, tl = self.D, self.tl
        low = self.low and D.autocast
        if D.llama:  # composite backward: weight product, x * rstd product, mean, power
            x, rstd, xn = saved
            if low:  # the incoming bf16 gradient, cast up for the float32 composite
                g32 = tl.new(D.slot, f"{name} grad (float32)")
                tl.drop(g)
                g = g32
            g_xn = tl.new(D.slot, f"{name} grad of normalised")
            tl.temp(D.slot, f"{name} weight grad product")
            self.param_grad(D.d, name)
            tl.drop(xn, g)
            part = tl.new(D.slot, f"{name} grad via rstd")
            tl.temp(D.slot, f"{name} rstd grad product")
            tl.drop(g_xn, rstd)
            mean_g = tl.new(D.slot, f"{name} mean grad")
            sq_g = tl.new(D.slot, f"{name} power grad")
            tl.temp(D.slot, f"{name} power grad product")
            tl.drop(mean_g, x)
            tl.drop(part)
            out = tl.new(D.slot, f"{name} input grad")
            tl.drop(sq_g)
            if low:
                cast = tl.new(D.a * D.N * D.d, f"{name} input grad (bf16)")
                tl.drop(out)
                out = cast
            return out
        out = tl.new(D.a * D.N * D.d if low else D.slot, f"{name} input grad")
        self.param_grad(2 * D.d, name)
        tl.drop(*saved, g)
        return out

    # --- attention --------------------------------------------------------------------------

    def attention(self, x: Buf, where: str = "attention") -> tuple[Buf, dict]:
        """Attn(N1(x)) (``CausalSelfAttention`` on the normalised x); returns (output, state)."""
        D, tl = self.D, self.tl
        N, d, kv = D.N, D.d, D.kv
        n1, norm_saved = self.norm(x, f"{where} norm")
        qkv, qkv_saved = self.linear(n1, N, d, d + 2 * kv, f"{where} qkv")
        self.save(qkv)  # q, k, v are views of it; attention saves them (v at least)
        sdpa_saved: list[Buf | None] = [qkv]
        rotated = self.rotary(sdpa_saved, where)
        out = tl.new(D.a * N * d, f"{where} attention output")
        lse = self.saved_new(D.st * D.B * D.H * D.T, f"{where} log-sum-exp")
        self.save(out, *rotated)
        sdpa_saved += [*rotated, out, lse]
        tl.drop(qkv, n1, *rotated)
        y = out
        if D.attention_output_copied:
            y = tl.new(D.a * N * d, f"{where} attention output (contiguous)")
            tl.drop(out)
        proj, proj_saved = self.linear(y, N, d, d, f"{where} proj", cast=False)
        tl.drop(y)
        state = {"norm": norm_saved, "qkv": qkv_saved, "sdpa": sdpa_saved, "proj": proj_saved}
        return proj, state

    def rotary(self, sdpa_saved: list[Buf | None], where: str) -> list[Buf]:
        """Rotary embeddings of q and k (llama): new tensors (the rotation runs in float32,
        four half-width products and a stack), cos/sin saved by the products."""
        D, tl = self.D, self.tl
        if not D.llama:
            return []
        N = D.N
        trig = 4 * D.T * (D.cfg.head_dim // 2) * (8 if D.st == 8 else 4)
        sdpa_saved.append(self.saved_new(trig, f"{where} rotary cos/sin"))
        rotated = []
        for part, width in (("q", D.d), ("k", D.kv)):
            w = 4 if D.autocast else D.s  # float32 (float64 kept)
            up = tl.new(w * N * width, f"{where} {part} upcast") if D.autocast else None
            half = w * N * width // 2
            # x1 cos - x2 sin, then x1 sin + x2 cos: two products and their sum at a time
            t1, t2 = tl.new(half, f"{where} {part} x1 cos"), tl.new(half, f"{where} {part} x2 sin")
            r1 = tl.new(half, f"{where} {part} rotated half")
            tl.drop(t1, t2)
            t3, t4 = tl.new(half, f"{where} {part} x1 sin"), tl.new(half, f"{where} {part} x2 cos")
            r2 = tl.new(half, f"{where} {part} rotated half")
            tl.drop(t3, t4)
            rot = tl.new(w * N * width, f"{where} {part} rotated")  # their stack
            tl.drop(r1, r2, up)
            if D.autocast:
                cast = tl.new(2 * N * width, f"{where} {part} rotated (cast)")
                tl.drop(rot)
                rot = cast
            rotated.append(rot)
        return rotated

    def rotary_back(self, grads: list[Buf], where: str) -> None:
        """dq and dk through the rotation: four half-width products, then a stack."""
        D, tl = self.D, self.tl
        if not D.llama:
            return
        for i, width in ((0, D.d), (1, D.kv)):
            w = 4 if D.autocast else D.s
            terms = [tl.new(w * D.N * width // 2, f"{where} rotary grad term") for _ in range(4)]
            new = tl.new(D.a * D.N * width, f"{where} rotary grad")
            tl.drop(*terms, grads[i])
            grads[i] = new

    def attention_back(self, g: Buf, st: dict, where: str = "attention") -> Buf:
        D, tl = self.D, self.tl
        N, d, kv = D.N, D.d, D.kv
        g_y = self.linear_back(
            g, st["proj"], N, d, d, f"{where} proj", input_fp32=False, bias=D.proj_bias
        )
        grads = [tl.new(D.a * N * w, f"{where} d{p}") for p, w in (("q", d), ("k", kv), ("v", kv))]
        tl.drop(*st["sdpa"], g_y)
        self.rotary_back(grads, where)
        g_qkv = tl.new(D.a * N * (d + 2 * kv), f"{where} qkv grad")  # split's backward: a cat
        tl.drop(*grads)
        g_n1 = self.linear_back(g_qkv, st["qkv"], N, d, d + 2 * kv, f"{where} qkv", bias=D.qkv_bias)
        return self.norm_back(g_n1, st["norm"], f"{where} norm")

    # --- MLPs -------------------------------------------------------------------------------

    def mlp(
        self,
        x: Buf,
        where: str = "mlp",
        rows: int = 0,
        width: int = 0,
        swiglu: bool | None = None,
        weight_cast: bool = True,
        normed: bool = True,
        ends_block: bool = True,
    ) -> tuple[Buf, dict]:
        """MLP(N2(x)): GELU (gpt2) or SwiGLU (llama, experts); ``normed`` False when ``x`` is
        the normalised input already (the experts). ``ends_block``: its projection is the
        block's last saving op, where a checkpoint's recompute stops (not an MoE's experts:
        the combine and the shared expert's gate product come after them, and that product
        saves the shared expert's output)."""
        D, tl = self.D, self.tl
        rows, F, d = rows or D.N, width or D.F, D.d
        st: dict = {"norm": []}
        if normed:
            h, st["norm"] = self.norm(x, f"{where} norm")
        else:
            h = x
            tl.hold(h)
        if D.llama if swiglu is None else swiglu:
            gate, st["gate"] = self.linear(h, rows, d, F, f"{where} gate", weight_cast)
            up, st["up"] = self.linear(h, rows, d, F, f"{where} up", weight_cast)
            silu = tl.new(D.a * rows * F, f"{where} silu")
            prod = tl.new(D.a * rows * F, f"{where} gated")
            self.save(gate, silu, up)  # saved by silu (its input) and by the product (both)
            st["silu"], st["mul"] = [gate], [silu, up]
            out, st["proj"] = self.linear(
                prod, rows, F, d, f"{where} proj", weight_cast, cast=False, last=ends_block
            )
            tl.drop(gate, up, silu, prod, h)
            st["swiglu"] = True
            return out, st
        fc, st["fc"] = self.linear(h, rows, d, F, f"{where} fc", weight_cast)
        act = tl.new(D.a * rows * F, f"{where} gelu")
        self.save(fc)  # saved by GELU
        st["gelu"] = [fc]
        out, st["proj"] = self.linear(
            act, rows, F, d, f"{where} proj", weight_cast, cast=False, last=ends_block
        )
        tl.drop(fc, act, h)
        st["swiglu"] = False
        return out, st

    def mlp_back(self, g: Buf, st: dict, where: str = "mlp", rows: int = 0, width: int = 0) -> Buf:
        D, tl = self.D, self.tl
        rows, F, d = rows or D.N, width or D.F, D.d
        gelu = not st["swiglu"]  # GPT-2's MLP has biases; SwiGLU's (and the experts') none
        g_act = self.linear_back(
            g, st["proj"], rows, F, d, f"{where} proj", input_fp32=False, bias=gelu
        )
        if st["swiglu"]:
            g_silu = tl.new(D.a * rows * F, f"{where} silu grad")
            g_up = tl.new(D.a * rows * F, f"{where} up grad")
            tl.drop(*st["mul"], g_act)
            g_gate = tl.new(D.a * rows * F, f"{where} gate grad")
            tl.drop(*st["silu"], g_silu)
            gh = self.linear_back(g_up, st["up"], rows, d, F, f"{where} up")
            second = self.linear_back(g_gate, st["gate"], rows, d, F, f"{where} gate")
            tl.drop(second)  # summed into the first in place (nobody else holds it)
        else:
            g_fc = tl.new(D.a * rows * F, f"{where} gelu grad")
            tl.drop(*st["gelu"], g_act)
            gh = self.linear_back(g_fc, st["fc"], rows, d, F, f"{where} fc", bias=True)
        if st["norm"]:
            return self.norm_back(gh, st["norm"], f"{where} norm")
        return gh

    # --- residual block ---------------------------------------------------------------------

    def ffn(self, x: Buf) -> tuple[Buf, dict]:
        """The block's FFN on ``x`` (its norm included): dense MLP or MoE."""
        if self.D.moe:
            return self.moe(x)
        return self.mlp(x)

    def ffn_back(self, g: Buf, st: dict) -> Buf:
        return self.moe_back(g, st) if st.get("moe") else self.mlp_back(g, st)

    def f(self, p: Buf) -> tuple[Buf, dict]:
        """f(p) = a + FFN(p + a), a = Attn(N1(p)) (``Block.f``; the MoE block likewise)."""
        D, tl = self.D, self.tl
        a, ast = self.attention(p)
        x2 = tl.new(D.slot, "p + a")
        m, mst = self.ffn(x2)
        tl.drop(x2)
        out = tl.new(0 if self.early_stop else D.a * D.N * D.d, "a + ffn")
        tl.drop(a, m)
        return out, {"attn": ast, "ffn": mst}

    def f_back(self, g_out: Buf, st: dict, p_grad: Buf | None = None) -> Buf:
        """Gradient of p from ``g_out``, the gradient of f(p) = a + FFN(p + a); ``p_grad`` is a
        gradient p already has (the residual's direct path), else None.

        The sum's backward hands ``g_out`` to a and to the FFN; p + a hands the FFN's input
        gradient to p and to a. a's two gradients sum into a new tensor (in place under
        autocast, where a's is a bf16 copy of its own), as do p's when it had one."""
        D, tl = self.D, self.tl
        tl.hold(g_out)  # the FFN path's reference; the caller's is a's
        g_x2 = self.ffn_back(g_out, st["ffn"])
        if p_grad is None:
            p_buf = g_x2
        else:
            p_buf = tl.new(D.slot, "grad of p (sum)")
            tl.drop(p_grad)
        if D.autocast:
            tl.temp(D.a * D.N * D.d, "grad of p + a (cast)")
            g_a = g_out
        else:
            g_a = tl.new(D.slot, "grad of a (sum)")
            tl.drop(g_out)
        if p_buf is not g_x2:
            tl.drop(g_x2)
        g_pa = self.attention_back(g_a, st["attn"])
        tl.drop(g_pa)  # added into p's gradient in place
        return p_buf

    def block(self, p: Buf) -> tuple[Buf, dict]:
        """The residual block p + f(p)."""
        D, tl = self.D, self.tl
        fo, st = self.f(p)
        out = tl.new(0 if self.early_stop else D.slot, "block output")
        tl.drop(fo)
        return out, st

    def branch_grad(self, g: Buf, name: str) -> Buf:
        """The residual add's backward (``p + branch``), the first node of a block's backward:
        the branch's gradient (``grad_for_branch``: its output is bf16 under autocast). No
        saved tensor is unpacked before it, so it comes before a checkpoint's recompute."""
        return self.grad_for_branch(g, self.D.a * self.D.N * self.D.d, f"grad of {name} (cast)")

    def block_back(self, g: Buf, st: dict, g_f: Buf) -> Buf:
        """p + f(p): p gets ``g`` directly and through f (``g_f``: ``branch_grad``)."""
        return self.f_back(g_f, st, p_grad=g)

    # --- embedding, head, loss --------------------------------------------------------------

    def embedding(self) -> Buf:
        D, tl = self.D, self.tl
        tok = tl.new(D.slot, "token embeddings")
        if D.llama:
            return tok
        ids = tl.new(INT64 * D.T, "position ids")  # saved by the position embedding
        pos = tl.new(D.s * D.T * D.d, "position embeddings")
        x = tl.new(D.slot, "embeddings")
        tl.drop(tok, pos)
        self.pos_ids = ids
        return x

    def embedding_back(self, g: Buf) -> None:
        D, tl = self.D, self.tl
        c = D.cfg
        if not D.llama:  # the position table's gradient, summed over the batch
            tl.temp(D.s * D.T * D.d, "position embedding grad (sum)")
            tl.new(D.s * c.max_seq_len * D.d, "position embedding grad")
            tl.drop(self.pos_ids)
        dense = tl.new(D.s * D.V * D.d, "token embedding grad")
        if c.tie_embeddings:  # added into the head's gradient of the same weight
            tl.drop(dense)
        tl.drop(g)

    def head(self, h: Buf) -> dict:
        """Final norm, projection, next-token cross-entropy (full, chunked, or Liger)."""
        D, tl = self.D, self.tl
        c = D.cfg
        hf, norm_saved = self.norm(h, "final norm")
        targets = tl.new(INT64 * D.N, "targets")
        st: dict = {"norm": norm_saved, "targets": targets}
        if c.head_impl == "inplace":  # models/head.py: inplace_cross_entropy
            logits, st["proj"] = self.linear(hf, D.N, D.d, D.V, "head")
            tl.drop(hf)
            st["valid"] = tl.new(D.N, "valid targets")
            self._inplace_chunk()  # the loss's value, a chunk at a time
            st["inplace"] = logits  # saved by the loss; the output carries no logits
            return st
        if c.head_chunk_tokens or c.head_impl != "torch":
            chunk = min(c.head_chunk_tokens or D.T, D.N)
            st.update(chunk=chunk, hidden=hf, valid=tl.new(D.N, "valid targets"))
            acc = D.st
            wc = tl.new(2 * D.V * D.d, "head weight cast") if D.autocast else None
            for _ in range(1):  # every chunk alike: the peak of one
                if D.autocast:
                    tl.temp(2 * chunk * D.d, "chunk hidden cast")
                    prod = tl.new(2 * chunk * D.V, "chunk logits (bf16)")
                    logits = tl.new(acc * chunk * D.V, "chunk logits")
                    tl.drop(prod)
                else:
                    logits = tl.new(acc * chunk * D.V, "chunk logits")
                tl.temp(acc * chunk * D.V, "chunk log-sum-exp work")
                tl.drop(logits)
            tl.drop(wc)
            return st
        logits, st["proj"] = self.linear(hf, D.N, D.d, D.V, "head")
        tl.drop(hf)
        wide = logits
        if D.autocast:  # cross-entropy in float32
            wide = tl.new(4 * D.N * D.V, "logits in float32")
        st["lsm"] = tl.new(D.st * D.N * D.V, "log-softmax")
        if wide is not logits:
            tl.drop(wide)
        st["logits"] = logits  # held by the model's output until the step's loss returns
        return st

    def end_forward(self, st: dict) -> None:
        """The forward is over: the output's logits and autocast's weight casts go."""
        self.tl.drop(st.get("logits"))
        self.flush_casts()

    def flush_casts(self) -> None:
        """An autocast region ends: its cache of weight casts goes (what is saved stays). In
        the backward each recompute (checkpointing, a reversible step) is its own region."""
        for wc in self.casts:
            self.tl.drop(wc)
        self.casts = []

    def _inplace_chunk(self) -> None:
        """One chunk of ``inplace_cross_entropy``'s work: a float32 copy of the chunk's rows
        (low-precision logits only). ``logsumexp`` needs no (rows, V) buffer of its own on
        either device: on CPU its kernel is fused (measured), and on CUDA the H200's max-batch
        trials of midpoint with this head (GPT-2 small, 30 and 60 sequences) measured 147 MiB
        below a plan that booked an ``exp(x - max)`` float32 buffer (196 MiB at 1,024 rows of
        GPT-2's vocabulary) at both sizes; without it the plan is 49 MiB under both."""
        D, tl = self.D, self.tl
        rows = min(INPLACE_ROWS, D.N)
        work = tl.new(D.st * rows * D.V, "in-place loss chunk (float32)") if D.a != D.st else None
        tl.drop(work)

    def head_back(self, st: dict) -> Buf:
        D, tl = self.D, self.tl
        if "inplace" in st:  # the gradient is written into the logits, chunk by chunk
            self._inplace_chunk()
            tl.drop(st["targets"], st["valid"])
            g_hf = self.linear_back(st["inplace"], st["proj"], D.N, D.d, D.V, "head")
            return self.norm_back(g_hf, st["norm"], "final norm")
        if "chunk" in st:
            chunk = st["chunk"]
            d_hidden = tl.new(D.slot, "head hidden grad")
            self.param_grad(D.V * D.d, "head")
            if D.autocast:
                wc = tl.new(2 * D.V * D.d, "head weight cast")
                prod = tl.new(2 * chunk * D.V, "chunk logits (bf16)")
                logits = tl.new(D.st * chunk * D.V, "chunk logits")
                tl.drop(prod)
                tl.temp(D.st * chunk * D.V, "chunk log-sum-exp work")
                dl = tl.new(2 * chunk * D.V, "chunk logits grad (bf16)")
                tl.drop(logits)
                tl.temp(2 * chunk * D.d, "chunk hidden grad")
                tl.temp(2 * D.V * D.d, "chunk weight grad (bf16)")
                tl.drop(dl, wc)
            else:
                logits = tl.new(D.st * chunk * D.V, "chunk logits")
                tl.temp(D.st * chunk * D.V, "chunk log-sum-exp work")
                tl.temp(D.st * chunk * D.d, "chunk hidden grad")
                tl.drop(logits)
            tl.drop(st["hidden"], st["valid"], st["targets"])
            return self.norm_back(d_hidden, st["norm"], "final norm")
        g_lsm = tl.new(D.st * D.N * D.V, "nll grad")
        g_logits = tl.new(D.st * D.N * D.V, "log-softmax grad")
        tl.drop(st["lsm"], g_lsm, st["targets"])
        if D.autocast:
            g16 = tl.new(2 * D.N * D.V, "logits grad (bf16)")
            tl.drop(g_logits)
            g_logits = g16
        g_hf = self.linear_back(g_logits, st["proj"], D.N, D.d, D.V, "head")
        return self.norm_back(g_hf, st["norm"], "final norm")

    # --- mixture of experts -----------------------------------------------------------------

    def moe(self, x: Buf, normed: bool = True) -> tuple[Buf, dict]:
        """N2, then ``MoE.forward``: route, dispatch, experts (every token runs top_k of them;
        the planner takes the routing as balanced, N k / E rows per expert, which only
        matters for the one expert being backpropagated), combine, shared expert, aux."""
        D, tl = self.D, self.tl
        c = D.cfg
        N, d, E, k = D.N, D.d, c.n_experts, c.top_k
        rp = D.st
        if normed:
            h, norm_saved = self.norm(x, "moe norm")
        else:
            h, norm_saved = x, []
            tl.hold(h)
        st: dict = {"moe": True, "norm": norm_saved}
        logits, st["router"] = self.linear(h, N, d, E, "router")
        probs = tl.new(rp * N * E, "router probabilities")  # saved by the softmax
        tl.drop(logits)
        w = tl.new(rp * N * k, "top-k weights")
        st["topk"] = [self.kept(tl.new(INT64 * N * k, "top-k indices"))]
        if c.norm_topk_prob:
            total = tl.new(rp * N, "top-k sum")
            wn = tl.new(rp * N * k, "normalised weights")
            st["div"] = [self.kept(w), self.kept(total)]
            w = wn
        order = tl.new(INT64 * N * k, "dispatch order")
        disp = tl.new(INT64 * N * k, "dispatch index")  # saved by index_select
        width = D.a if self.low and D.autocast else D.s  # the dtype of the MoE's input
        tokens = tl.new(width * N * k * d, "gathered tokens")
        disp = self.kept(disp)
        rows = _expert_rows(N * k, E)
        outs = []
        st["experts"] = []
        for e in range(E):  # each expert on its rows: SwiGLU, weights cast per expert
            out, est = self.mlp(
                tokens, f"expert {e}", rows=rows[e], swiglu=True, normed=False, ends_block=False
            )
            st["experts"].append(est)
            outs.append(out)
        cat = tl.new(D.a * N * k * d, "expert outputs")
        tl.drop(*outs)
        inv = tl.new(INT64 * N * k, "combine index")
        back = tl.new(D.a * N * k * d, "expert outputs in slot order")
        tl.drop(cat)
        inv = self.kept(inv)
        wcast = tl.new(2 * N * k, "weights cast") if D.autocast else w
        if not D.autocast:
            tl.hold(w)
        prod = tl.new(D.a * N * k * d, "weighted outputs")
        st["combine"] = [self.kept(back), self.kept(wcast), inv, disp]
        tl.drop(w)
        y = tl.new(D.a * N * d, "moe output")
        tl.drop(prod)
        if c.shared_expert:
            width = c.d_ff_shared or c.d_ff
            gate, st["shared_gate"] = self.linear(h, N, d, 1, "shared gate")
            sig = tl.new(D.a * N, "shared gate sigmoid")
            tl.drop(gate)
            so, st["shared"] = self.mlp(
                h, "shared expert", width=width, swiglu=True, normed=False, ends_block=False
            )
            sm = tl.new(D.a * N * d, "gated shared output")
            st["shared_mul"] = [self.kept(sig), self.kept(so)]
            y2 = tl.new(D.a * N * d, "moe + shared output")
            tl.drop(y, sm)
            y = y2
        st["aux"] = [self.saved_new(rp * E, "routed fractions")]
        probs = self.kept(probs)
        st["probs"] = probs
        # ``MoE.forward``'s locals live to its return: the gathered tokens (float32; under
        # autocast the experts' Linears save their casts, not them) and the dispatch order
        tl.drop(h, tokens, order)
        st["rows"] = rows
        return y, st

    def moe_back(self, g: Buf, st: dict) -> Buf:
        D, tl = self.D, self.tl
        c = D.cfg
        N, d, E, k = D.N, D.d, c.n_experts, c.top_k
        rp = D.st
        gh_parts: list[Buf] = []
        if c.shared_expert:
            width = c.d_ff_shared or c.d_ff
            sig, so = st["shared_mul"]
            g_so = tl.new(D.a * N * d, "shared output grad")
            tl.temp(D.a * N * d, "shared gate grad product")
            g_sig = tl.new(D.a * N, "shared gate grad")
            tl.drop(sig, so)
            gh_parts.append(self.mlp_back(g_so, st["shared"], "shared expert", width=width))
            gh_parts.append(self.linear_back(g_sig, st["shared_gate"], N, d, 1, "shared gate"))
        tl.drop(*st["aux"])
        back, wcast, inv, disp = st["combine"]
        g_back = tl.new(D.a * N * k * d, "grad of slot-order outputs")
        tl.temp(D.a * N * k * d, "grad of weights (product)")
        g_w = tl.new(rp * N * k, "grad of weights")
        tl.drop(back, wcast, g)
        g_cat = tl.new(D.a * N * k * d, "grad of expert outputs")
        tl.drop(g_back, inv)
        g_rows = []
        for e in reversed(range(E)):
            tl.hold(g_cat)
            rows = st["rows"][e]
            g_rows.append(self.mlp_back(g_cat, st["experts"][e], f"expert {e}", rows=rows))
        tl.drop(g_cat)
        width = D.a if self.low and D.autocast else D.s  # the dtype of the MoE's input
        g_tokens = tl.new(width * N * k * d, "grad of gathered tokens")
        tl.drop(*g_rows)
        g_h = tl.new(width * N * d, "grad of moe input (scatter)")
        tl.drop(g_tokens, disp)
        if c.norm_topk_prob:  # through the division, then top-k's scatter, softmax, router
            tl.temp(rp * N * k, "grad of weights before normalising")
            tl.drop(*st["div"])
        g_probs = tl.new(rp * N * E, "grad of probabilities (scatter)")
        tl.drop(g_w, *st["topk"])
        g_logits = tl.new(rp * N * E, "grad of router logits")
        tl.drop(g_probs, st["probs"])
        gh_parts.append(self.linear_back(g_logits, st["router"], N, d, E, "router"))
        tl.drop(*gh_parts)  # summed into g_h in place
        if not st["norm"]:
            return g_h
        return self.norm_back(g_h, st["norm"], "moe norm")

    # --- the MoE residual block (MoEBlock.forward) ------------------------------------------

    def moe_block(self, p: Buf) -> tuple[Buf, dict]:
        """x2 = p + Attn(N1(p)); out = x2 + MoE(N2(x2))."""
        D, tl = self.D, self.tl
        a, ast = self.attention(p)
        x2 = tl.new(D.slot, "p + a")
        tl.drop(a)
        y, mst = self.moe(x2)
        out = tl.new(0 if self.early_stop else D.slot, "block output")
        tl.drop(y, x2)
        return out, {"attn": ast, "ffn": mst}

    def moe_block_back(self, g: Buf, st: dict, g_y: Buf) -> Buf:
        """``g_y``: the MoE output's gradient (``branch_grad``)."""
        D, tl = self.D, self.tl
        g_moe = self.moe_back(g_y, st["ffn"])
        g_x2 = tl.new(D.slot, "grad of p + a (sum)")
        tl.drop(g, g_moe)
        tl.hold(g_x2)  # p's and a's (the same tensor)
        g_pa = self.attention_back(g_x2, st["attn"])
        tl.drop(g_pa)  # into p's, in place
        return g_x2

    # --- trunks -----------------------------------------------------------------------------

    def residual_trunk(self, x: Buf) -> tuple[Buf, list]:
        """Baseline or MoE blocks; with checkpointing each block keeps only its input and its
        forward's saved tensors go as it runs (they are recomputed in backward)."""
        D, tl = self.D, self.tl
        run = self.moe_block if D.moe else self.block
        states = []
        for _ in range(D.L):
            self.unshard()
            self.saving = not D.cfg.checkpointing
            out, st = run(x)
            self.saving = True
            self.reshard()
            if D.cfg.checkpointing:
                tl.hold(x)  # the checkpoint's saved input
                states.append(x)
            else:
                states.append(st)
            tl.drop(x)
            x = out
        return x, states

    def residual_trunk_back(self, g: Buf, states: list) -> Buf:
        D, tl = self.D, self.tl
        run = self.moe_block if D.moe else self.block
        back = self.moe_block_back if D.moe else self.block_back
        for st in reversed(states):
            self.unshard()
            g_branch = self.branch_grad(g, "moe output" if D.moe else "f")
            if D.cfg.checkpointing:  # recompute the block, saving, then backpropagate it
                x = st
                self.early_stop = True
                out, st = run(x)
                self.early_stop = False
                self.flush_casts()
                tl.drop(out, x)
            g = back(g, st, g_branch)
            self.reduce_scatter()
        return g

    def reversible_trunk(self, x: Buf) -> tuple[Buf, list[Buf]]:
        """The Function's forward: every step without saving; the final state is kept."""
        D, tl = self.D, self.tl
        if D.recompute == "revffn":
            return self.revffn_trunk(x)
        steps = self._steps()
        prev, cur = x, x
        tl.hold(x, x)  # both slots start as the embedding
        self.saving = False  # the Function's forward runs under no_grad
        for i, kind in enumerate(steps):
            if self._block_starts(steps, i):
                self.unshard()
            prev, cur = self._forward_step(kind, prev, cur)
            if self._block_ends(steps, i):
                self.reshard()
        tl.drop(x)  # the embedding's variable
        self.saving = True
        return self._readout(prev, cur), [prev, cur]

    def _steps(self) -> list[str]:
        D = self.D
        if D.recompute == "branches":
            return ["attn", "mlp"] * D.L
        euler = D.cfg.init_state == "euler"
        return (["euler"] if euler else []) + ["f"] * D.L

    @staticmethod
    def _block_starts(steps: list[str], i: int) -> bool:
        """Whether step i is the first of its block's run (the Euler start and layer 1 share
        block 0; a coupling layer is two steps on one block)."""
        return not (steps[i] == "mlp" or (i == 1 and steps[0] == "euler"))

    @staticmethod
    def _block_ends(steps: list[str], i: int) -> bool:
        return i + 1 == len(steps) or Step._block_starts(steps, i + 1)

    def _forward_step(self, kind: str, prev: Buf, cur: Buf) -> tuple[Buf, Buf]:
        """One step of the Function's forward (no grad), over slices of the batch when asked
        (``reversible.sliced_forward_step``: the branch's transients are a slice's, the new
        slot is gathered into a whole tensor made after the first slice)."""
        tl = self.tl
        src = prev if kind in ("euler", "mlp") else cur  # the slot the branch reads

        def branch() -> Buf:
            if kind in ("f", "euler"):
                return self.f(src)[0]
            return (self.attention(src) if kind == "attn" else self.mlp(src))[0]

        new = self._sliced_new(
            branch, "next state" if kind in ("f", "euler") else f"{kind} half-step"
        )
        if kind == "euler":
            return prev, new
        if kind == "f":
            tl.drop(prev)
            return cur, new
        if kind == "mlp":  # the second slot is replaced
            tl.drop(cur)
            return prev, new
        tl.drop(prev)  # attn: the first slot is replaced
        return new, cur

    def _sliced_new(self, branch: Callable[[], Buf], name: str, width: int = 0) -> Buf:
        """A new state slot (``width`` bytes per token; the residual stream's by default) from
        ``branch()``'s output, each slice's output dropped once its slot is made."""
        tl, whole = self.tl, self.D
        made: list[Buf] = []
        sliced = len(self._slices()) > 1

        def one(first: bool) -> None:
            S = self.D
            out = branch()
            new = tl.new((width or S.s * S.d) * S.N, name)
            tl.drop(out)
            if not sliced:
                made.append(new)
                return
            if first:
                made.append(tl.new((width or whole.s * whole.d) * whole.N, name))
            tl.drop(new)

        self._per_slice(one)
        return made[0]

    def _readout(self, prev: Buf, cur: Buf) -> Buf:
        D, tl = self.D, self.tl
        if D.readout == "mean":
            return tl.new(D.slot, "readout (mean)")
        tl.hold(cur)
        return cur

    def _slices(self) -> list[Dims]:
        """The batches one reversible backward step runs on (``recompute_chunk_seqs``,
        ``reversible.sliced_backward_step``): the whole batch, or a first slice and one like
        every later slice (each later slice repeats its peak; a shorter last one is lower)."""
        D = self.D
        c = D.cfg.recompute_chunk_seqs
        if not c or D.B <= c:
            return [D]
        return [D.with_batch(c)] * 2

    def _per_slice(self, body: Callable[[bool], None]) -> None:
        """``body(first)`` with ``self.D`` each slice's; a later slice's parameter gradients
        live until the slice ends (the step returns them, then they are summed and freed)."""
        whole = self.D
        for k, S in enumerate(self._slices()):
            self.D = S
            self.slice_grads = [] if k else None
            try:
                body(k == 0)
            finally:
                self.D = whole
                extra, self.slice_grads = self.slice_grads, None
                self.tl.drop(*(extra or []))

    def reversible_trunk_back(self, g: Buf, final: list[Buf]) -> Buf:
        """The Function's backward, step by step: recompute the branch (saving), rebuild the
        previous state in place, free the branch output, backpropagate the branch; the state
        and its gradient are updated in place (``schemes.py``)."""
        D, tl = self.D, self.tl
        if D.recompute == "revffn":
            return self.revffn_trunk_back(g, final)
        y: list[Buf | None] = list(final)
        if D.readout == "mean":  # (p + q) / 2: one gradient for both slots, copied for one
            half = tl.new(D.slot, "readout grad")
            tl.drop(g)
            gs: list[Buf | None] = [tl.new(D.slot, "slot gradient copy"), half]
        else:
            gs = [None, g]
        steps = self._steps()
        for i, kind in reversed(list(enumerate(steps))):
            if self._block_ends(steps, i):
                self.unshard()
            gs = self._backward_step(kind, y, gs, rebuild=i > 0)
            if self._block_starts(steps, i):
                self.reduce_scatter()
        tl.drop(*y)
        out = gs[0] if gs[0] is not None else gs[1]
        if gs[0] is not None and gs[1] is not None:
            tl.drop(gs[1])  # the engine sums the two input gradients into the first
        return out

    def _backward_step(
        self, kind: str, y: list[Buf | None], gs: list[Buf | None], rebuild: bool
    ) -> list[Buf | None]:
        """One step; ``y`` is updated in place like the Function's list. Over slices of the
        batch (``_slices``) the recompute and the VJP are a slice's; the states and their
        gradients stay whole, a gradient slot no gradient had reached is gathered into a whole
        tensor made after the first slice, and an input state not rebuilt (the stack's first
        step) lives to the end of the step."""
        D, tl = self.D, self.tl
        whole = D
        sliced = len(self._slices()) > 1
        branch = kind in ("f", "euler")
        t = 1 if branch else (0 if kind == "attn" else 1)  # the slot the step updates
        src = 0 if branch else 1 - t  # the slot the branch reads
        grad_in = 1 if branch else t  # the gradient the branch's VJP takes
        grad_out = 0 if branch else 1 - t  # the gradient its result is added into
        made: list[Buf] = []

        def step(first: bool) -> None:
            S = self.D
            if branch:
                out, st = self.f(y[src])  # type: ignore[arg-type]
            elif kind == "attn":
                out, st = self.attention(y[src])  # type: ignore[arg-type]
            else:
                out, st = self.mlp(y[src])  # type: ignore[arg-type]
            self.flush_casts()
            tl.drop(out)  # used by the in-place rebuild, then released before the VJP
            if not rebuild and not sliced:
                tl.drop(y[t])
                y[t] = None
            g_in = gs[grad_in]
            if g_in is None:
                return
            g_b = self.vjp_grad(g_in, S.a * S.N * S.d, "incoming grad (cast)")
            if branch:
                jg = self.f_back(g_b, st)
            elif kind == "attn":
                jg = self.attention_back(g_b, st)
            else:
                jg = self.mlp_back(g_b, st)
            tl.drop(g_b)  # the VJP has returned
            if gs[grad_out] is not None:
                tl.drop(jg)  # added into the state's gradient in place
            elif not sliced:
                made.append(jg)
            else:
                if first:
                    made.append(tl.new(whole.slot, "state grad (gathered from slices)"))
                tl.drop(jg)

        self._per_slice(step)
        if not rebuild and sliced:
            tl.drop(y[t])
            y[t] = None
        if made:
            gs[grad_out] = made[0]
        if branch:
            if kind == "f":  # (p_l, p_{l+1}) -> (p_{l-1} in p_{l+1}'s memory, p_l)
                y[0], y[1] = y[1], y[0]
            if gs[1] is None or kind == "euler":
                return gs
            return [gs[1], gs[0]]
        return gs

    # --- RevFFN -----------------------------------------------------------------------------

    def revffn_trunk(self, x: Buf) -> tuple[Buf, list[Buf]]:
        """Split, then per layer Y1 = X1 + P1(Attn(..)), Y2 = X2 + P2(FFN(U3 Y1)); halves."""
        D, tl = self.D, self.tl
        half = D.slot // 2
        x1, x2 = tl.new(half, "X1"), tl.new(half, "X2")  # chunk views of a detached input
        tl.drop(x)
        self.saving = False  # the Function's forward runs under no_grad
        for _ in range(D.L):
            y1 = self._sliced_new(
                lambda a=x1, b=x2: self._revffn_attn(a, b)[0], "Y1", D.s * D.d // 2
            )
            tl.drop(x1)
            x1 = y1
            y2 = self._sliced_new(lambda a=x1: self._revffn_ffn(a)[0], "Y2", D.s * D.d // 2)
            tl.drop(x2)
            x2 = y2
        self.saving = True
        h = tl.new(D.slot, "readout (concat)")
        return h, [x1, x2]

    def _revffn_attn(self, x1: Buf, x2: Buf) -> tuple[Buf, dict]:
        """P1(Attn(N1(U1 q_in), kv: N1(U2 X2))): the adapters lift halves to width d."""
        D, tl = self.D, self.tl
        N, d, kv = D.N, D.d, D.kv
        q_up, qs = self.linear(x1, N, d // 2, d, "U1")
        kv_up, ks = self.linear(x2, N, d // 2, d, "U2")
        self.low = True  # from here on the branch reads the adapters' bf16 outputs
        nq, nqs = self.norm(q_up, "N1 (queries)")
        nk, nks = self.norm(kv_up, "N1 (keys, values)")
        tl.drop(q_up, kv_up)
        q, q_saved = self.linear(nq, N, d, d, "q projection")
        kvp, kv_saved = self.linear(nk, N, d, 2 * kv, "kv projection")
        self.low = False
        sdpa: list[Buf | None] = []
        rotated = self.rotary(sdpa, "attention")
        out = tl.new(D.a * N * d, "attention output")
        lse = self.saved_new(D.st * D.B * D.H * D.T, "log-sum-exp")
        if D.llama:  # q rotated, v a view of the kv product
            self.save(kvp, out, *rotated)
            sdpa += [kvp, *rotated, out, lse]
        else:
            self.save(q, kvp, out)
            sdpa += [q, kvp, out, lse]
        tl.drop(q, kvp, nq, nk, *rotated)
        y = out
        if D.attention_output_copied:
            y = tl.new(D.a * N * d, "attention output (contiguous)")
            tl.drop(out)
        proj, ps = self.linear(y, N, d, d, "attention proj", cast=False)
        tl.drop(y)
        p1, p1s = self.linear(proj, N, d, d // 2, "P1", cast=False)
        tl.drop(proj)
        return p1, {
            "U1": qs,
            "U2": ks,
            "nq": nqs,
            "nk": nks,
            "q": q_saved,
            "kv": kv_saved,
            "sdpa": sdpa,
            "proj": ps,
            "P1": p1s,
        }

    def _revffn_ffn(self, y1: Buf) -> tuple[Buf, dict]:
        D, tl = self.D, self.tl
        N, d = D.N, D.d
        u3, u3s = self.linear(y1, N, d // 2, d, "U3")
        self.low = True  # N2 and the FFN read U3's bf16 output
        z, zs = self.norm(u3, "N2")
        tl.drop(u3)
        if D.moe:
            out, fst = self.moe(z, normed=False)
        else:
            out, fst = self.mlp(z, normed=False)
        self.low = False
        tl.drop(z)
        p2, p2s = self.linear(out, N, d, d // 2, "P2", cast=False)
        tl.drop(out)
        return p2, {"U3": u3s, "N2": zs, "ffn": fst, "P2": p2s}

    def revffn_trunk_back(self, g: Buf, final: list[Buf]) -> Buf:
        D, tl = self.D, self.tl
        half = D.slot // 2
        x1, x2 = final
        g1, g2 = tl.new(half, "grad X1"), tl.new(half, "grad X2")  # the readout's cat split
        tl.drop(g)

        def ffn_coupling(first: bool) -> None:
            # recompute on Y1, rebuild X2 in place, VJP into g1
            S = self.D
            out, st = self._revffn_ffn(x1)
            self.flush_casts()
            tl.drop(out)
            g_b = self.vjp_grad(g2, S.a * S.N * S.d // 2, "grad of P2 output (cast)")
            tl.drop(self._revffn_ffn_back(g_b, st), g_b)

        def attention_coupling(first: bool) -> None:
            # fixed point (x1 mode) or exact, recompute, VJP
            S = self.D
            if S.cfg.revffn_query == "x1":
                tl.temp(S.slot // 2, "fixed-point iterate")
                self.saving = False  # the iterations run under no_grad
                fp_out, _ = self._revffn_attn(x1, x2)
                self.saving = True
                tl.drop(fp_out)
            out, st = self._revffn_attn(x1, x2)
            self.flush_casts()
            tl.drop(out)
            g_b = self.vjp_grad(g1, S.a * S.N * S.d // 2, "grad of P1 output (cast)")
            j1, j2 = self._revffn_attn_back(g_b, st)
            tl.drop(j1, j2, g_b)

        for _ in range(D.L):  # each coupling one step of the Function, over slices if asked
            self._per_slice(ffn_coupling)
            self._per_slice(attention_coupling)
        h = tl.new(D.slot, "rebuilt input")
        gh = tl.new(D.slot, "input grad (cat)")
        tl.drop(x1, x2, g1, g2, h)
        return gh

    def _revffn_ffn_back(self, g: Buf, st: dict) -> Buf:
        D = self.D
        N, d = D.N, D.d
        g_out = self.linear_back(g, st["P2"], N, d, d // 2, "P2", input_fp32=False)
        self.low = True
        g_z = self.moe_back(g_out, st["ffn"]) if D.moe else self.mlp_back(g_out, st["ffn"])
        g_u3 = self.norm_back(g_z, st["N2"], "N2")
        self.low = False
        return self.linear_back(g_u3, st["U3"], N, d // 2, d, "U3")

    def _revffn_attn_back(self, g: Buf, st: dict) -> tuple[Buf, Buf]:
        D, tl = self.D, self.tl
        N, d, kv = D.N, D.d, D.kv
        g_proj = self.linear_back(g, st["P1"], N, d, d // 2, "P1", input_fp32=False)
        g_y = self.linear_back(
            g_proj, st["proj"], N, d, d, "attention proj", input_fp32=False, bias=D.proj_bias
        )
        grads = [tl.new(D.a * N * d, "dq"), tl.new(D.a * N * kv, "dk")]
        dv = tl.new(D.a * N * kv, "dv")
        tl.drop(*st["sdpa"], g_y)
        self.rotary_back(grads, "attention")
        dq = grads[0]
        g_kv = tl.new(D.a * N * 2 * kv, "kv grad")
        tl.drop(grads[1], dv)
        self.low = True
        g_nq = self.linear_back(dq, st["q"], N, d, d, "q projection", bias=D.qkv_bias)
        g_nk = self.linear_back(g_kv, st["kv"], N, d, 2 * kv, "kv projection", bias=D.qkv_bias)
        g_qu = self.norm_back(g_nq, st["nq"], "N1 (queries)")
        g_ku = self.norm_back(g_nk, st["nk"], "N1 (keys, values)")
        self.low = False
        return (
            self.linear_back(g_qu, st["U1"], N, d // 2, d, "U1"),
            self.linear_back(g_ku, st["U2"], N, d // 2, d, "U2"),
        )

    # --- optimizer --------------------------------------------------------------------------


def _expert_rows(slots: int, experts: int) -> list[int]:
    """Rows per expert under balanced routing: ``slots`` = tokens x top_k split evenly."""
    base, extra = divmod(slots, experts)
    return [base + (1 if e < extra else 0) for e in range(experts)]


def warm_up_heap(D: Dims) -> int:
    """CPU: the heap that is free, and resident, when a measurement takes its baseline.

    Before it reads the runtime's memory a CPU measurement runs one step of a one-layer copy
    of the case, same batch and sequence (``measure.step.warm_runtime``: kernels paged in,
    thread pools, oneDNN's kernels for the case's shapes) and frees it. glibc keeps the heap
    that step's small tensors touched (freed chunks below the top stay mapped), so it is part
    of the baseline, and the measured step's small tensors take those free chunks before the
    heap grows: the step's heap costs its high-water mark less this. It is the warm-up's small
    tensors only, a lower bound of what the warm-up leaves free (measured, ``mallinfo2``'s
    free bytes at the baseline: 3.1-3.8 MiB in ``moe.yaml``'s bf16 processes against the
    1.1 MiB replayed here, 0.8-0.9 MiB in quickstart's against 0.1)."""
    cfg = dataclasses.replace(D.cfg, **D.cfg.one_layer_settings())
    one = dataclasses.replace(D, cfg=cfg, warm_optimizer=False)
    return replay_step(one, charged(one, "params"), heap_floor=False).small_peak


def replay_step(
    D: Dims, base: int = 0, *, allocator: bool = True, heap_floor: bool = True
) -> Timeline:
    """The whole training step on a timeline starting at ``base`` bytes (parameters and
    optimizer state); its ``peak`` is the step's, ``marks`` has the backward's start.
    ``allocator`` False books tensors' own bytes (to compare with a trace of live tensors)
    instead of what the allocator charges for them, and no heap. ``heap_floor`` False: a
    first pass that only finds the step's heap peak (a warm step starts at it)."""
    charge = D.charge if allocator else None
    # CPU: tensors below the mmap threshold come from malloc's heap, whose high-water mark
    # stays resident (``Timeline``)
    heap = MMAP_THRESHOLD if allocator and D.device == "cpu" else 0
    floor = free = 0
    if heap and heap_floor:
        if D.warm_optimizer:  # the steps before left the heap at its peak
            floor = replay_step(D, base, allocator=allocator, heap_floor=False).small_peak
        free = warm_up_heap(D)
    tl = Timeline(base + INT64 * D.N, charge, heap=heap, heap_floor=floor, heap_free=free)  # + ids
    step = Step(D, tl)
    if D.parallel == "ddp":
        # DDP's reducer allocates flat buckets for every gradient's all-reduce when it wraps
        # the model, and keeps them: they are there before the step starts (measured: the
        # resident memory before a step exceeds parameters and optimizer state by the
        # gradients' bytes), so the head's cross-entropy buffers come on top of them
        tl.new(grad_bytes(D), "DDP gradient buckets")  # held to the step's end
    if D.parallel == "fsdp":  # the root's parameters stay whole from forward to backward
        root = tl.new(step.root_bytes, "unsharded root")
    # CUDA: PyTorch gives each (cuBLAS handle, stream) a workspace from its caching allocator
    # at its first matmul and keeps it; handles are per thread, so the forward's thread and
    # autograd's device thread hold one each (measured on an H100, torch 2.11: +32 MiB at the
    # first forward matmul, +32 MiB more at the first backward one). After a first step both
    # exist before the step starts.
    workspaces = 2 if D.warm_optimizer else 1
    tl.new(workspaces * D.cublas_workspace, "cuBLAS workspaces")  # held to the step's end
    x = step.embedding()
    if D.reversible:  # the trunks take the embedding's reference
        h, state = step.reversible_trunk(x)
    else:
        h, state = step.residual_trunk(x)
    head = step.head(h)
    tl.drop(h)
    step.end_forward(head)
    tl.mark("backward")
    tl.phase = "backward"
    if not D.warm_optimizer:  # a first step: autograd's thread makes its own at its first matmul
        tl.new(D.cublas_workspace, "cuBLAS workspace of autograd's thread")
    g = step.head_back(head)
    back = step.reversible_trunk_back if D.reversible else step.residual_trunk_back
    step.embedding_back(back(g, state))
    step.reduce_scatter()  # the root's gradients
    if D.parallel == "fsdp":
        tl.drop(root, step.in_flight)
    tl.phase = "optimizer"
    # every gradient exists now (the replay booked them as they came); a first step makes
    # the optimizer's state here
    if not D.warm_optimizer:
        tl.new(charged(D, "optimizer"), "optimizer state (first step)")
    tl.temp(optimizer_step_transient(D), "optimizer step")
    return tl
