"""Write examples/manifest.parquet, the manifest the README renders (run from the repository root)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    ("red-circle-left", "red circle moving left on blue background", 1, "single"),
    ("white-square-up", "white square moving up on green gradient background", 2, "single"),
    ("yellow-triangle-right", "yellow triangle moving right on black background", 3, "single"),
    ("blue-circle-down", "blue circle moving down on white background", 4, "single"),
    ("green-square-left", "green square moving left on red gradient background", 5, "single"),
    ("black-circle-right", "black circle moving right on yellow background", 6, "single"),
    ("two-shapes", "red square moving right and white circle moving left on blue background", 7, "two"),
    ("no-seed", "white circle moving down on black gradient background", None, "single"),
]


def main() -> None:
    table = pa.table(
        {
            "id": [r[0] for r in ROWS],
            "prompt": [r[1] for r in ROWS],
            "seed": pa.array([r[2] for r in ROWS], pa.int64()),
            "category": [r[3] for r in ROWS],
        }
    )
    out = Path(__file__).with_name("manifest.parquet")
    pq.write_table(table, out)
    print(f"wrote {out} ({table.num_rows} rows)")


if __name__ == "__main__":
    main()
