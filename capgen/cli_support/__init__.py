"""What every `capgen` command line shares: one error presenter, one-line usage errors, safe printing.

The runtime's commands (`caption`, `info`), the converter's (`convert …`,
`setup`) and `bench` all reach these through `capgen.cli_support`, so neither
half carries the other's command-line plumbing. Modules here import only the
standard library, typer and `capgen.runtime.errors` (the exit-code table);
`interrupts` imports the standard library alone, so the console script can
install its Ctrl-C handling before anything heavy is imported.
"""
