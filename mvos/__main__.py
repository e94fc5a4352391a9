from mvos.cli import main

main()
