"""Reports read from the results store only (`bench table`, `bench plot`, `bench regress`); nothing here trains or
attacks:
    tables        the cells: the leaderboard and the paper layouts, from the rows and manifests (Results)
    table_spec    [tables.NAME] of bench.toml: a paper's table layout as data, with its published numbers
    threat_board  one leaderboard per threat model, with model cards
    html_board    the self-contained leaderboard.html page over the threat boards
    render        writes leaderboard.md / .csv (/ .tex), the threat boards and the paper tables to a folder
    plots         accuracy vs eps / steps and norm distributions as PNGs with a Markdown page
    regress       the nightly regression check against a committed baseline"""
