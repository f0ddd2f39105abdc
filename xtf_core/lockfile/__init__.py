"""The `xtf.lock` file: its format (`format`), the verbs that write and check it (`verbs`), and its
enforcement when a checkpoint is loaded (`enforce`). No torch here. See docs/lockfile.md."""
