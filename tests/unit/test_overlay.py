"""The merge rules of oci/overlay.py, one by one, over entry lists (what a layer index
records); the integration tests compare whole trees with umoci unpack."""

from __future__ import annotations

from regfs.oci.entry import Entry, EntryKind
from regfs.oci.overlay import Tree, layer_tree, merge

K = EntryKind


def d(path: str, mode: int = 0o755, *, uid: int = 0, mtime: int = 1) -> Entry:
    return Entry(path, K.DIR, mode, uid, 0, mtime)


def f(path: str, size: int = 1, *, mode: int = 0o644, mtime: int = 1) -> Entry:
    return Entry(path, K.FILE, mode, 0, 0, mtime, size=size)


def link(path: str, target: str) -> Entry:
    return Entry(path, K.HARDLINK, 0o644, 0, 0, 1, linkname=target)


def sym(path: str, target: str) -> Entry:
    return Entry(path, K.SYMLINK, 0o777, 0, 0, 1, linkname=target)


def paths(tree: Tree) -> dict[str, str]:
    return {path: node.entry.kind.value for path, node in tree.walk()}


def test_layers_add_up_and_a_later_file_replaces_an_earlier_one() -> None:
    tree = merge([[d("etc"), f("etc/a", 1)], [f("etc/a", 2), f("etc/b")]])
    assert paths(tree) == {"etc": "dir", "etc/a": "file", "etc/b": "file"}
    a = tree.lookup("etc/a")
    assert a is not None and a.entry.size == 2 and a.layer == 1


def test_whiteout_of_a_file_and_of_a_directory_with_its_contents() -> None:
    lower = [d("a"), f("a/x"), d("b"), d("b/c"), f("b/c/y"), f("keep")]
    tree = merge([lower, [f("a/.wh.x"), f(".wh.b")]])
    assert paths(tree) == {"a": "dir", "keep": "file"}


def test_markers_never_show_and_whiteouts_of_missing_paths_do_nothing() -> None:
    tree = merge([[d("a")], [f("a/.wh.nothing"), f("nowhere/.wh.x"), f("a/.wh..wh..opq")]])
    assert paths(tree) == {"a": "dir"}


def test_opaque_directory_keeps_itself_and_this_layers_entries_in_either_order() -> None:
    lower = [d("a", 0o700), f("a/old"), d("a/sub"), f("a/sub/deep")]
    before = merge([lower, [d("a", 0o750), f("a/.wh..wh..opq"), f("a/new")]])
    after = merge([lower, [d("a", 0o750), f("a/new"), f("a/.wh..wh..opq")]])
    for tree in (before, after):
        assert paths(tree) == {"a": "dir", "a/new": "file"}
        node = tree.lookup("a")
        assert node is not None and node.entry.mode == 0o750


def test_a_whiteout_after_the_layers_own_entry_spares_it() -> None:
    tree = merge([[f("x", 1)], [f("x", 2), f(".wh.x")]])
    x = tree.lookup("x")
    assert x is not None and x.entry.size == 2


def test_a_whiteout_of_a_directory_spares_what_this_layer_put_inside() -> None:
    tree = merge([[d("a"), f("a/old")], [f("a/new"), f(".wh.a")]])
    assert paths(tree) == {"a": "dir", "a/new": "file"}


def test_directory_over_directory_merges_and_the_later_attributes_win() -> None:
    xattrs = (("user.k", b"v"),)
    upper = Entry("a", K.DIR, 0o1777, 5, 6, 9, xattrs=xattrs)
    tree = merge([[d("a", 0o700), f("a/x")], [upper, f("a/y")]])
    assert paths(tree) == {"a": "dir", "a/x": "file", "a/y": "file"}
    node = tree.lookup("a")
    assert node is not None
    assert (node.entry.mode, node.entry.uid, node.entry.xattrs) == (0o1777, 5, xattrs)


def test_file_replaces_directory_and_directory_replaces_file() -> None:
    tree = merge([[d("a"), f("a/x"), f("b")], [f("a")], [d("b"), f("b/y")]])
    assert paths(tree) == {"a": "file", "b": "dir", "b/y": "file"}


def test_directory_deleted_then_recreated_in_a_later_layer_starts_empty() -> None:
    tree = merge([[d("a"), f("a/x")], [f(".wh.a")], [d("a"), f("a/y")]])
    assert paths(tree) == {"a": "dir", "a/y": "file"}


def test_duplicates_within_a_layer_the_later_wins() -> None:
    tree = merge([[f("x", 1), f("x", 2), d("y"), f("y", 3)]])
    x, y = tree.lookup("x"), tree.lookup("y")
    assert x is not None and x.entry.size == 2
    assert y is not None and y.entry.kind is K.FILE and y.entry.size == 3


def test_hardlinks_within_a_layer_share_one_node_and_count_their_names() -> None:
    tree = merge([[d("bin"), f("bin/a", 7), link("bin/b", "bin/a"), link("c", "bin/a")]])
    a, b, c = (tree.lookup(p) for p in ("bin/a", "bin/b", "c"))
    assert a is b is c and a is not None and a.nlink == 3


def test_hardlink_across_layers_to_a_lower_file() -> None:
    tree = merge([[f("a", 7)], [link("b", "a")]])
    a, b = tree.lookup("a"), tree.lookup("b")
    assert a is b and a is not None and a.nlink == 2 and a.layer == 0


def test_a_replaced_hardlinked_name_leaves_the_other_on_the_old_inode() -> None:
    tree = merge([[f("a", 1), link("b", "a")], [f("a", 2)]])
    a, b = tree.lookup("a"), tree.lookup("b")
    assert a is not None and b is not None and a is not b
    assert (a.entry.size, a.nlink, b.entry.size, b.nlink) == (2, 1, 1, 1)


def test_a_whited_out_hardlinked_name_lowers_nlink() -> None:
    tree = merge([[f("a"), link("b", "a")], [f(".wh.a")]])
    assert paths(tree) == {"b": "file"}
    b = tree.lookup("b")
    assert b is not None and b.nlink == 1


def test_a_hardlink_to_a_missing_path_or_a_directory_is_left_out() -> None:
    tree = merge([[d("dir"), link("x", "gone"), link("y", "dir"), link("z", "")]])
    assert paths(tree) == {"dir": "dir"}


def test_a_hardlink_to_a_symlink_links_the_symlink_itself() -> None:
    tree = merge([[sym("s", "/etc"), link("t", "s")]])
    s, t = tree.lookup("s"), tree.lookup("t")
    assert s is t and s is not None and s.entry.kind is K.SYMLINK and s.nlink == 2


def test_entries_under_a_symlinked_directory_land_in_its_target() -> None:
    base = [d("usr"), d("usr/lib"), sym("lib", "usr/lib"), sym("abs", "/usr/lib")]
    tree = merge([base, [f("lib/x"), f("abs/y")], [f("lib/.wh.x")]])
    assert paths(tree) == {
        "usr": "dir",
        "usr/lib": "dir",
        "usr/lib/y": "file",
        "lib": "symlink",
        "abs": "symlink",
    }


def test_symlinks_and_dotdot_never_leave_the_root() -> None:
    base = [sym("up", "../../.."), sym("loop", "loop"), d("etc")]
    tree = merge([base, [f("up/etc/passwd"), f("loop/x")]])
    assert set(paths(tree)) == {"up", "loop", "etc", "etc/passwd"}


def test_implicit_parents_are_0755_root_and_the_root_takes_a_root_entry() -> None:
    tree = merge([[d("", 0o700, uid=3), f("a/b/c")]], implicit_mtime_ns=5)
    a = tree.lookup("a")
    assert a is not None and a.layer == -1
    assert (a.entry.mode, a.entry.uid, a.entry.gid, a.entry.mtime_ns) == (0o755, 0, 0, 5)
    assert tree.root.entry.mode == 0o700 and tree.root.entry.uid == 3


def test_a_root_entry_that_is_not_a_directory_and_entries_under_a_file_are_left_out() -> None:
    tree = merge([[f(""), f("file"), f("file/under")]])
    assert paths(tree) == {"file": "file"}
    assert tree.root.is_dir


def test_directory_nlink_counts_subdirectories() -> None:
    tree = merge([[d("a"), d("a/b"), d("a/c"), f("a/f")]])
    a = tree.lookup("a")
    assert a is not None and a.nlink == 4 and tree.root.nlink == 3


def test_layer_tree_shows_whiteouts_and_opaque_markers_as_the_tar_holds_them() -> None:
    tree = layer_tree([d("a"), f("a/.wh..wh..opq", 0), f(".wh.gone", 0), f("a/x")])
    assert paths(tree) == {
        "a": "dir",
        "a/.wh..wh..opq": "file",
        ".wh.gone": "file",
        "a/x": "file",
    }


def test_non_utf8_names_are_kept_as_surrogate_escapes() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    tree = merge([[f(name), f("ünï")]])
    assert set(paths(tree)) == {name, "ünï"}


def test_a_20000_entry_layer_merges_with_a_directory_whited_out() -> None:
    entries = [d(f"d{i}") for i in range(200)]
    entries += [f(f"d{i % 200}/f{i}") for i in range(20_000)]
    tree = merge([entries, [f(".wh.d0")]])
    assert sum(1 for _ in tree.walk()) == 199 + 20_000 - 100
