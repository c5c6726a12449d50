"""The user-facing tools beside rendering: benchmarks (``ditfarm bench ...``), calibration, router and tiny-model
training, and the adherence evaluation.  Nothing on the render path imports them."""
