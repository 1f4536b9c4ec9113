"""Command-line options from a table, the way every ``bptt`` command declares its own."""


def add_options(parser, options, defaults, *, fill=False, none_label="None"):
    """``--name`` for each ``name -> (type, help)`` of ``options``, the help ending in the
    default that ``defaults`` (the command's config dataclass) holds. ``fill`` false: a name not
    given parses as None, so that a config file or the config itself fills it; true: it parses as
    that default. ``none_label`` is what the help says for a default of None."""
    for name, (kind, text) in options.items():
        default = getattr(defaults, name)
        shown = none_label if default is None else default
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                            default=default if fill else None, help=f"{text} (default {shown})")
