from tests.bench.cli import main

main()
