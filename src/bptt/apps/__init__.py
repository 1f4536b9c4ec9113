"""Applications on real data: each module says what data, what model and what metric, and
registers its ``bptt train NAME`` subcommand (``add_parser``)."""
