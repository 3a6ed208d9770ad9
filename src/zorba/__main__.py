from zorba.cli.app import main

if __name__ == "__main__":  # a spawned worker process imports this module again: no second CLI run
    main()
