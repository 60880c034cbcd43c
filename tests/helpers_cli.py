"""The one check that a `perank` command failed as the CLI promises: exit 2, one stderr line, no traceback."""
from __future__ import annotations


def one_line_error(capsys, code, expect):
    """Assert `main(...)` returned 2 with exactly one stderr line containing `expect`; return stderr."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert expect in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err
