"""The architectures revbench ships: each one's registry entry, its facts and where its builder
lives, readable without importing torch.

An entry names its builder as ``"module:function"``; the module (and torch) is imported when a
model is first built, so validating a suite, planning it and running its runner never import
torch. ``models.config.Arch`` documents each fact; a scheme from outside the package registers
the same way, with the builder itself (``register_arch`` as a decorator).
"""

from __future__ import annotations

from revbench.models.config import add_arch

_REV = "revbench.models.reversible"

add_arch(
    "baseline",
    "standard residual stream p + f(p) (checkpointing: optional)",
    "revbench.models.residual:build_baseline",
    teacher=True,
)
add_arch(
    "moe",
    "residual decoder, top-k routed MoE FFN (checkpointing: optional)",
    "revbench.models.moe:build_moe",
    moe_block=True,
    needs_experts=True,
    teacher=True,
)
add_arch(
    "midpoint",
    "p_{l+1} = p_{l-1} + 2h f(p_l) (Gal et al. Eq. 2.4); a, a_layers, a_draw: "
    "p_{l+1} = a_l p_{l-1} + (1-a_l) p_l + h f(p_l) (Eq. 3.6)",
    f"{_REV}:build_midpoint",
    reversible=True,
    readout="last",
    recompute="block",
    euler_start=True,
    settings=("a_layers", "a_draw", "force", "readout"),
)
add_arch(
    "leapfrog",
    "p_{l+1} = 2 p_l - p_{l-1} + h^2 f(p_l) (Gal et al.)",
    f"{_REV}:build_leapfrog",
    reversible=True,
    readout="last",
    recompute="block",
    euler_start=True,
    settings=("force", "readout"),
)
add_arch(
    "hamiltonian",
    "q = a q + Attn(N1(p)); p = b p + MLP(N2(q)) (Gal et al. Eqs. 2.8-2.9; ham_a, ham_b; "
    "at a = b = 1, the default, the same update as revnet)",
    f"{_REV}:build_hamiltonian",
    reversible=True,
    readout="mean",
    recompute="branches",
    settings=("ham_a", "ham_b", "ham_carry", "force", "readout"),
)
add_arch(
    "revnet",
    "Y1 = X1 + Attn(N1(X2)); Y2 = X2 + MLP(N2(Y1)) (Gomez et al. 2017)",
    f"{_REV}:build_revnet",
    reversible=True,
    readout="mean",
    recompute="branches",
    settings=("readout",),
)
add_arch(
    "revffn",
    "Y1 = X1 + P1(Attn(U1 X1, U2 X2)); Y2 = X2 + P2(MoE(U3 Y1)) (Liu et al.)",
    "revbench.models.revffn:build_revffn",
    reversible=True,
    readout="concat",
    recompute="revffn",
    moe_block=True,
    adapters=True,
    split_state=True,
    exact_with={"revffn_query": "x2"},
)
