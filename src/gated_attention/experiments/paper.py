"""The paper's published numbers (Qiu et al. 2025), printed beside our measurements.

Keys are our variant names; values are as printed in the paper (docs/paper.md section 4).
"""

from __future__ import annotations

# Table 4 (15A2B MoE, 400B tokens): mean gate score, M-Act, F-Attn, PPL.
TABLE4: dict[str, dict[str, float | None]] = {
    "none": {"gate_mean": None, "m_act": 1053, "f_attn": 0.467, "ppl": 6.026},
    "sdpa-elementwise": {"gate_mean": 0.116, "m_act": 94, "f_attn": 0.048, "ppl": 5.761},
    "sdpa-headwise": {"gate_mean": 0.172, "m_act": 98, "f_attn": 0.073, "ppl": 5.792},
    "sdpa-head-shared": {"gate_mean": 0.271, "m_act": 286, "f_attn": 0.301, "ppl": 5.801},
    "value-elementwise": {"gate_mean": 0.221, "m_act": 125, "f_attn": 0.297, "ppl": 5.820},
    "sdpa-input-independent": {"gate_mean": 0.335, "m_act": 471, "f_attn": 0.364, "ppl": 5.917},
    "sdpa-ns-sigmoid": {"gate_mean": 0.653, "m_act": 892, "f_attn": 0.451, "ppl": 5.900},
}

# Table 1 rows (avg PPL, MMLU) and the Table 3 controls (PPL only).
TABLE1: dict[str, dict[str, float | None]] = {
    "none": {"ppl": 6.026, "mmlu": 58.79},
    "more-kv-heads": {"ppl": 5.979, "mmlu": 59.78},
    "more-query-heads": {"ppl": 5.953, "mmlu": 58.45},
    "more-experts": {"ppl": 5.964, "mmlu": 58.84},
    "sdpa-elementwise": {"ppl": 5.761, "mmlu": 60.82},
    "value-elementwise": {"ppl": 5.820, "mmlu": 59.17},
    "key-elementwise": {"ppl": 6.016, "mmlu": 59.18},
    "query-elementwise": {"ppl": 5.981, "mmlu": 58.74},
    "dense-elementwise": {"ppl": 6.017, "mmlu": 59.41},
    "sdpa-headwise": {"ppl": 5.792, "mmlu": 60.05},
    "value-headwise": {"ppl": 5.808, "mmlu": 59.32},
    "sdpa-head-shared": {"ppl": 5.801, "mmlu": 60.06},
    "value-head-shared": {"ppl": 5.867, "mmlu": 59.02},
    "sdpa-additive-silu": {"ppl": 5.821, "mmlu": 60.06},
    "sdpa-elementwise-silu": {"ppl": 5.822, "mmlu": 60.49},
    "sdpa-rmsnorm": {"ppl": 5.847, "mmlu": None},
    "sdpa-silu": {"ppl": 5.975, "mmlu": None},
    "sdpa-additive-identity": {"ppl": 5.882, "mmlu": None},
    "sdpa-input-independent": {"ppl": 5.917, "mmlu": None},
    "sdpa-ns-sigmoid": {"ppl": 5.900, "mmlu": None},
}

# Independent measurement of the released 1.7B checkpoints (docs/paper.md section 4, last lines).
RELEASED_1P7B = {
    "none": {"f_attn": 0.4266},
    "sdpa-headwise": {"f_attn": 0.0525, "gate_mean": 0.257},
    "sdpa-elementwise": {"f_attn": 0.0187, "gate_mean": 0.140},
}

# Mean |SDPA output| before/after the G1 gate.
SDPA_OUTPUT_MEAN_ABS = {"before": 0.71, "after": 0.05}

# Table 5 (RULER): lengths and scores.
TABLE5_LENGTHS = ("4k", "8k", "16k", "32k", "64k", "128k")
TABLE5: dict[str, list[float | None]] = {
    "baseline 32k": [88.89, 85.88, 83.15, 79.50, None, None],
    "gated 32k": [90.56, 87.11, 84.61, 79.77, None, None],
    "baseline + YaRN": [82.90, 71.52, 61.23, 37.94, 37.51, 31.65],
    "gated + YaRN": [88.13, 80.01, 76.74, 72.88, 66.60, 58.82],
}
