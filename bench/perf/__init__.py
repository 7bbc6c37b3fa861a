"""What the harness's own work costs, each measured in one run with the contenders interleaved (medians kept):
    engine   the attack engine: our PGD step vs a bare forward+backward, torchattacks and foolbox (`bench perf`)
    stages   a model's forward / forward+backward time, stage by stage (`bench perf-stages`)
    checks   the per-cell verdict checks' share of a cell's attack time (`bench perf-checks`)"""
