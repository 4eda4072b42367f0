"""Hypothesis over the CLI (issue 9): whatever a user types, every command ends with exit code 0,
1 or 2 and a message, never a traceback, and the store still verifies afterwards."""

from __future__ import annotations

import shutil

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sia_engine.cli.main import main
from sia_engine.domain.integrity import verify_store
from store import Store

junk = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["main", "main-whatif", "main@0", "main@-1", "main@99999", "x@y", "@", "-1", "0", "nan", "inf", "1e400",
                     "../../etc/passwd", "ab", "f" * 64, "main#3", "main#-2", "'; DROP TABLE events; --", "\x00", "é",
                     "[/x]", "[bold red]x", "main@0[/]", "[/INST]", "[link=file:///etc/passwd]x[/link]"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)

commands = st.one_of(
    st.tuples(st.just("log"), st.sampled_from(["--limit", "--kind", "--branch"]), junk).map(list),
    st.tuples(st.just("sql"), st.one_of(junk, st.sampled_from([
        "SELECT * FROM read_text('/etc/passwd')", "SELECT repeat('x', 100000000)", "COPY events TO '/tmp/x.csv'",
        "ATTACH '/tmp/other.db'", "SELECT * FROM events; DELETE FROM events", "PRAGMA version", "SELECT 1/0",
        "SELECT * FROM no_table", "INSTALL httpfs", "SELECT 'x'::INTEGER"]))).map(list),
    st.tuples(st.just("fork"), junk, junk).map(list),
    st.tuples(st.just("rollback"), junk, junk, st.just("--reason"), junk).map(list),
    st.tuples(st.just("show"), junk).map(list),
    st.tuples(st.just("diff"), junk, junk).map(list),
    st.tuples(st.just("compare"), junk).map(list),
    st.tuples(st.just("branches")).map(list),
    st.tuples(st.just("snapshots")).map(list),
    st.tuples(st.just("verify"), st.just("--checkpoint"), junk, st.just("--public-key"), junk).map(list),
    st.tuples(st.just("replay"), junk).map(list),
)


def test_no_input_makes_a_traceback(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("base") / "s"
    assert CliRunner().invoke(main, ["demo", "--store", str(base)]).exit_code == 0

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(argv=commands)
    def run(argv: list[str]) -> None:
        store = tmp_path_factory.mktemp("s") / "s"
        shutil.copytree(base, store)
        r = CliRunner().invoke(main, [*argv, "--store", str(store)])
        assert r.exception is None or isinstance(r.exception, SystemExit), (argv, repr(r.exception), r.output[-500:])
        assert r.exit_code in (0, 1, 2), (argv, r.exit_code, r.output[-500:])
        if r.exit_code == 2:
            assert r.output.startswith("error:") or "Usage:" in r.output or "Error:" in r.output, (argv, r.output[-500:])
        with Store.open(store, read_only=True) as s:
            assert verify_store(s.log, s.blobs).ok, argv
        shutil.rmtree(store.parent)

    run()


def test_markup_in_user_text_is_printed_as_it_is(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 19, finding 14: rich markup in a branch name, a ref, a store path or a SQL cell was a
    MarkupError traceback, or was rendered."""
    store = tmp_path / "s"
    assert CliRunner().invoke(main, ["demo", "--store", str(store)]).exit_code == 0
    for argv in (["fork", "main@0", "[/x]"], ["show", "[/x]"], ["log", "--branch", "[/x]"], ["rollback", "[/x]", "v", "--reason", "[/y]"]):
        r = CliRunner().invoke(main, [*argv, "--store", str(store)])
        assert r.exit_code == 2 and r.output.startswith("error:") and "[/x]" in r.output, (argv, r.output)
    r = CliRunner().invoke(main, ["verify", "--store", str(tmp_path / "no[/x]store")])
    assert r.exit_code == 2 and "no[/x]store" in r.output
    r = CliRunner().invoke(main, ["sql", "SELECT '[/INST]' AS a, '[bold red]x[/]' AS b", "--store", str(store)])
    assert r.exit_code == 0 and "[/INST]" in r.output and "[bold red]x[/]" in r.output, r.output
