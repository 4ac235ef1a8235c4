from tokenpool.entrypoints.cli import main

main()
