"""The command line's wing: every `capgen` command's terminal side lives here, not in the library.

- `commands`: `capgen caption`, `info`, `models` and `tune` (the runtime's
  commands, registered by capgen/cli.py);
- `sinks`, `outputs`, `output_formats`, `annotate`: where `capgen caption`'s
  outcomes go (stdout, stderr, --output/--output-dir files and --resume,
  --annotate pictures);
- `presenter`: the one error presenter (every outcome becomes one stderr
  line and an exit code); `exit_codes`: the exit-code table and which code
  each library `ErrorCategory` ends a command with;
- `usage_errors`: one-line usage errors; `console`: safe printing, -q/-v;
  `interrupts`: Ctrl-C before and after a command (standard library only, so
  the console script installs it before anything heavy is imported).

The library (`capgen.runtime`) never imports this package; the converter's,
the server's and Ray's own command lines (`convert/model_cli.py`,
`serve/cli.py`, `ray_support/cli.py`, `ray_support/output.py`) use it.
typer is imported by `commands`, `presenter` and `usage_errors`; Pillow by
`annotate`, which `sinks` imports only for --annotate; numpy and onnxruntime
only inside the commands, so `capgen --help` stays fast.
"""
