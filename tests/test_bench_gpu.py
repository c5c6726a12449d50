"""`ditfarm bench gpu` runs here on tiny shapes: the same code the H200 runs, every row and phase present."""

import json

import pytest

from ditfarm.cache.presets import POLICIES
from ditfarm.commands.cli import main as cli
from ditfarm.tools.bench_gpu import EAGER_POLICY_ROWS, POLICY_ROWS

pytestmark = [pytest.mark.unit]


def test_bench_gpu_on_small_shapes(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert (
        cli(
            [
                "bench",
                "gpu",
                "--small",
                "--device",
                "cpu",
                "--compile-backend",
                "eager",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--video-steps",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert set(sections) == {"wan2.1-1.3b", "weights-1.3b", "wan2.1-14b", "video-1.3b", "families"}
    families = {r["family"]: r for r in sections["families"]["families"]}
    assert {"cogvideox", "hunyuan_video", "hunyuan_video15"} <= set(families), families
    for name, row in families.items():
        assert row.get("seconds_per_step", 0) > 0 and row["tokens"] > 0, (name, row)
    assert families["hunyuan_video"]["passes_per_step"] == 1 and families["cogvideox"]["passes_per_step"] == 2
    assert {"wan2.2-a14b-expert", "wan2.2-ti2v-5b", "wan2.1-i2v"} <= set(families), families
    assert families["wan2.2-a14b-expert"]["experts"] == 2 and families["wan2.1-i2v"]["images"] == ["image"]
    assert families["wan2.2-ti2v-5b"]["decode_seconds"] > 0 and families["wan2.2-ti2v-5b"]["video"] == [9, 64, 64]
    for key in ("wan2.1-1.3b", "wan2.1-14b"):
        rows = {r["method"]: r for r in sections[key]["rows"]}
        policy_rows = [f"compiled + {p}" for p in POLICY_ROWS] + [f"eager + {p}" for p in EAGER_POLICY_ROWS]
        expected = {"diffusers", "ditfarm none", "ditfarm compiled", *policy_rows}
        assert expected <= set(rows), set(rows)
        for name in expected:
            assert rows[name]["seconds_per_step"] > 0, name
        for name in policy_rows:  # at these knobs every block is computed: only the bookkeeping is timed
            assert rows[name]["computed_fraction"] == 1.0, name
        timed = {p.partition(":")[0] for p in POLICY_ROWS + EAGER_POLICY_ROWS}
        assert set(POLICIES) - {"none"} <= timed  # every policy a user can pick has its bookkeeping timed
        assert rows["graphs built while the policies ran"]["graphs"] == 0  # no policy forces a recompile
    assert sections["wan2.1-14b"]["scaled_to"] == 40 and sections["wan2.1-14b"]["blocks"] == 4
    video = sections["video-1.3b"]
    assert video["decoded_shape"] == [9, 64, 64, 3] and video["vae_tiling"]
    assert {"text", "denoise", "decode"} <= set(video["phases"])
    weights = {r["method"]: r for r in sections["weights-1.3b"]["weight_rows"]}
    timed = ("bf16 eager", "bf16 eager + LoRA", "bf16 compiled", "bf16 compiled + LoRA slot", "int8 eager")
    for name in (*timed, "int8 compiled"):
        assert weights[name]["seconds_per_step"] > 0, weights[name]
    for name in ("bf16 eager + LoRA", "bf16 compiled + LoRA slot"):  # two LoRAs read once each, then switched
        lora = weights[name]
        assert lora["lora_loads"] == 2 and lora["switch_seconds"] > 0 and lora["to_base_seconds"] > 0, lora
    assert weights["bf16 compiled + LoRA slot"]["graphs_built_by_switches"] == 0  # hotswap: no recompile
    assert "fp8" in weights["fp8"]["refused"]  # this CPU has no FP8: the row says why, as a render would
    printed = capsys.readouterr().out
    assert "| bf16 compiled + LoRA slot |" in printed and "| int8 eager |" in printed
    assert "| diffusers |" in printed and "| decode |" in printed and "| hunyuan_video15 |" in printed
