from zorba.cli import main

main()
