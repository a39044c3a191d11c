"""regfs.registry.registries_conf: registries.conf and its drop-ins as podman reads them
(containers-registries.conf(5) and containers/image's sysregistriesv2), and certs.d.

Every test points /etc and $HOME at temporary directories; nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from regfs.errors import ConfigError
from regfs.oci.reference import DOCKER_HUB_NAMES
from regfs.registry.registries_conf import MirrorSettings, RegistriesConf, RegistrySettings

# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def system_file(etc: Path, text: str) -> Path:
    return write(etc / "containers" / "registries.conf", text)


def load(etc: Path, home: Path, **env: str) -> RegistriesConf:
    return RegistriesConf.load({"HOME": str(home), **env}, etc=etc)


def conf_of(etc: Path, home: Path, text: str) -> RegistriesConf:
    system_file(etc, text)
    return load(etc, home)


# --------------------------------------------------------------------------------------------
# no files, defaults


def test_no_files_at_all_is_an_empty_configuration(etc: Path, home: Path) -> None:
    conf = load(etc, home)
    assert conf.files == ()
    assert conf.configured() == []
    assert conf.settings("quay.io") == RegistrySettings(
        name="quay.io",
        location="quay.io",
        insecure=False,
        blocked=False,
        mirrors=(),
        ca_files=(),
        configured=False,
    )
    assert conf.alias("alpine") is None


def test_names_are_matched_lower_case_and_docker_hub_by_any_of_its_names(
    etc: Path, home: Path
) -> None:
    conf = conf_of(etc, home, '[[registry]]\nlocation = "docker.io"\ninsecure = true\n')
    for name in ("docker.io", "Docker.IO", "index.docker.io", "registry-1.docker.io"):
        found = conf.settings(name)
        assert (found.name, found.insecure, found.configured) == ("docker.io", True, True)


# --------------------------------------------------------------------------------------------
# [[registry]]: the man page's own example, location rewriting, mirrors


MAN_PAGE_EXAMPLE = """
unqualified-search-registries = ["example.com"]

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true

[[registry]]
location = "registry.com"

[[registry.mirror]]
location = "mirror.registry.com"
"""


def test_the_man_page_example(etc: Path, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "regfs.registry.registries_conf"):
        path = system_file(etc, MAN_PAGE_EXAMPLE)
        conf = load(etc, home)
    assert conf.files == (path,)
    registry = conf.settings("registry.com")
    assert registry.location == "registry.com"
    assert registry.mirrors == (MirrorSettings("mirror.registry.com", False, "all"),)
    assert (registry.configured, registry.source) == (True, path)
    # example.com is named only with a repository path: configured (listed, may resolve
    # privately), but the path entry's location and mirrors are not the host's.
    example = conf.settings("example.com")
    assert (example.configured, example.location, example.mirrors) == (True, "example.com", ())
    assert conf.configured() == ["example.com", "registry.com"]
    messages = caplog.text
    assert "unqualified-search-registries is ignored" in messages
    assert "'example.com/foo' has a repository path" in messages


def test_a_location_with_a_path_rewrites_repositories(etc: Path, home: Path) -> None:
    conf = conf_of(
        etc,
        home,
        '[[registry]]\nprefix = "docker.io"\nlocation = "hub-mirror.corp:5000/dockerhub/"\n'
        '[[registry.mirror]]\nlocation = "cache.corp/hub"\npull-from-mirror = "digest-only"\n',
    )
    hub = conf.settings("docker.io")
    assert hub.location == "hub-mirror.corp:5000/dockerhub"  # the trailing "/" dropped
    assert (hub.host, hub.namespace) == ("hub-mirror.corp:5000", "dockerhub")
    assert hub.remote("library/alpine") == "dockerhub/library/alpine"
    (mirror,) = hub.mirrors
    assert (mirror.host, mirror.remote("library/alpine")) == ("cache.corp", "hub/library/alpine")
    assert mirror.pull_from_mirror == "digest-only"
    plain = conf.settings("quay.io")
    assert (plain.host, plain.namespace, plain.remote("a/b")) == ("quay.io", "", "a/b")


@pytest.mark.parametrize(
    ("registry_keys", "mirror_keys", "expected"),
    [
        ("", "", "all"),
        ("", 'pull-from-mirror = "all"', "all"),
        ("", 'pull-from-mirror = "tag-only"', "tag-only"),
        ("", 'pull-from-mirror = "digest-only"', "digest-only"),
        ("mirror-by-digest-only = true", "", "digest-only"),
        ("mirror-by-digest-only = false", 'pull-from-mirror = "tag-only"', "tag-only"),
    ],
)
def test_pull_from_mirror(
    etc: Path, home: Path, registry_keys: str, mirror_keys: str, expected: str
) -> None:
    conf = conf_of(
        etc,
        home,
        f'[[registry]]\nlocation = "quay.io"\n{registry_keys}\n'
        f'[[registry.mirror]]\nlocation = "m.local:5000"\ninsecure = true\n{mirror_keys}\n',
    )
    assert conf.settings("quay.io").mirrors == (MirrorSettings("m.local:5000", True, expected),)


# --------------------------------------------------------------------------------------------
# which [[registry]] applies: longest prefix, host:port, wildcards


def test_the_longest_prefix_wins_and_a_host_covers_its_ports(etc: Path, home: Path) -> None:
    conf = conf_of(
        etc,
        home,
        '[[registry]]\nlocation = "example.com"\ninsecure = true\n'
        '[[registry]]\nlocation = "example.com:5000"\nblocked = true\n',
    )
    assert conf.settings("example.com").insecure
    assert conf.settings("example.com:5000").blocked
    # As containers/image matches (its source calls it unintended, podman does it): a host
    # prefix also covers the host on another port.
    other_port = conf.settings("example.com:6000")
    assert (other_port.insecure, other_port.blocked) == (True, False)
    assert other_port.location == "example.com:6000"
    for unrelated in ("example.comx", "sub.example.com", "example.co", "xexample.com"):
        assert not conf.settings(unrelated).configured, unrelated


def test_wildcard_prefixes(etc: Path, home: Path) -> None:
    conf = conf_of(
        etc,
        home,
        '[[registry]]\nprefix = "*.example.com"\ninsecure = true\n'
        '[[registry]]\nprefix = "*.bar.example.com"\nblocked = true\n'
        '[[registry]]\nprefix = "*.remap.test"\nlocation = "mirror.local"\n'
        '[[registry]]\nlocation = "c.example.com"\n',
    )
    for name in ("a.example.com", "b.a.example.com", "a.example.com:5000"):
        found = conf.settings(name)
        assert (found.insecure, found.blocked, found.configured) == (True, False, True), name
        assert found.location == name  # no location: no rewrite
    for name in ("example.com", "a.example.com.evil.org", "aexample.com", "example.com:5000"):
        assert not conf.settings(name).configured, name
    # The longer wildcard wins; at equal length the name itself beats the wildcard.
    assert conf.settings("foo.bar.example.com").blocked
    assert conf.settings("c.example.com").insecure is False
    # A wildcard with a location replaces the host, the port stays (containers/image's rule).
    assert conf.settings("a.remap.test:5000").location == "mirror.local:5000"
    # Wildcards are not listed: there is no one name to list.
    assert conf.configured() == ["c.example.com"]


# --------------------------------------------------------------------------------------------
# prefixes with a repository path: only `blocked`


def test_a_prefix_with_a_path_blocks_its_repositories_only(etc: Path, home: Path) -> None:
    conf = conf_of(
        etc,
        home,
        '[[registry]]\nlocation = "docker.io/library/evil"\nblocked = true\n'
        '[[registry]]\nlocation = "quay.io"\nblocked = true\n'
        '[[registry]]\nlocation = "quay.io/good"\n',
    )
    assert conf.repository_blocked("docker.io", "library/evil")
    assert conf.repository_blocked("index.docker.io", "library/evil/sub")
    assert conf.repository_blocked("docker.io", "library/evil:latest") is True
    assert not conf.repository_blocked("docker.io", "library/evil2")
    assert not conf.repository_blocked("docker.io", "library/alpine")
    assert not conf.settings("docker.io").blocked
    # The longest prefix decides, both ways.
    assert conf.repository_blocked("quay.io", "other/repo")
    assert not conf.repository_blocked("quay.io", "good/repo")
    assert conf.settings("quay.io").blocked
    assert conf.configured() == ["docker.io"]  # quay.io is blocked at the host


# --------------------------------------------------------------------------------------------
# duplicate prefixes, drop-ins, the order files are read in


def test_a_second_table_with_the_same_prefix_in_one_file_is_ignored(
    etc: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "regfs.registry.registries_conf"):
        conf = conf_of(
            etc,
            home,
            '[[registry]]\nlocation = "quay.io"\n[[registry.mirror]]\nlocation = "first.local"\n'
            '[[registry]]\nlocation = "quay.io"\n[[registry.mirror]]\nlocation = "second.local"\n',
        )
    assert [m.location for m in conf.settings("quay.io").mirrors] == ["first.local"]
    assert "a second [[registry]] with prefix 'quay.io' is ignored" in caplog.text


def test_drop_ins_replace_tables_by_prefix_in_order(etc: Path, home: Path) -> None:
    main = system_file(
        etc,
        '[[registry]]\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "main.local"\n'
        '[[registry]]\nlocation = "ghcr.io"\ninsecure = true\n',
    )
    system_dir = etc / "containers" / "registries.conf.d"
    ten = write(
        system_dir / "10-mirror.conf",
        '[[registry]]\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "ten.local"\n',
    )
    twenty = write(system_dir / "20-quay.conf", '[[registry]]\nlocation = "quay.io"\n')
    write(system_dir / "30.conf.bak", "not even TOML [[[")  # not *.conf: never read
    (system_dir / "40.conf").mkdir()  # a directory: skipped
    user_dir = home / ".config" / "containers" / "registries.conf.d"
    user = write(
        user_dir / "05-user.conf",
        '[[registry]]\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "user.local"\n',
    )
    conf = load(etc, home)
    assert conf.files == (main, ten, twenty, user)  # system drop-ins, then the user's
    assert [m.location for m in conf.settings("docker.io").mirrors] == ["user.local"]
    assert conf.settings("docker.io").source == user
    assert conf.settings("ghcr.io").insecure  # untouched by the drop-ins
    assert conf.configured() == ["docker.io", "ghcr.io", "quay.io"]


def test_a_user_registries_conf_replaces_the_system_files(etc: Path, home: Path) -> None:
    system_file(etc, '[[registry]]\nlocation = "system.example"\n')
    write(
        etc / "containers" / "registries.conf.d" / "a.conf",
        '[[registry]]\nlocation = "sysd.example"\n',
    )
    user = write(
        home / ".config/containers/registries.conf", '[[registry]]\nlocation = "user.example"\n'
    )
    user_d = write(
        home / ".config/containers/registries.conf.d/b.conf",
        '[[registry]]\nlocation = "userd.example"\n',
    )
    conf = load(etc, home)
    assert conf.files == (user, user_d)
    assert conf.configured() == ["user.example", "userd.example"]


@pytest.mark.parametrize("variable", ["CONTAINERS_REGISTRIES_CONF", "REGISTRIES_CONFIG_PATH"])
def test_the_environment_names_the_main_file(
    etc: Path, home: Path, tmp_path: Path, variable: str
) -> None:
    system_file(etc, '[[registry]]\nlocation = "system.example"\n')
    write(home / ".config/containers/registries.conf", '[[registry]]\nlocation = "user.example"\n')
    drop_in = write(
        etc / "containers" / "registries.conf.d" / "a.conf",
        '[[registry]]\nlocation = "sysd.example"\n',
    )
    named = write(tmp_path / "mine.conf", '[[registry]]\nlocation = "mine.example"\n')
    conf = load(etc, home, **{variable: str(named)})
    # As containers/image does: the named file replaces the main one; drop-ins still apply.
    assert conf.files == (named, drop_in)
    assert conf.configured() == ["mine.example", "sysd.example"]


def test_containers_registries_conf_wins_over_registries_config_path(
    etc: Path, home: Path, tmp_path: Path
) -> None:
    first = write(tmp_path / "first.conf", '[[registry]]\nlocation = "first.example"\n')
    second = write(tmp_path / "second.conf", '[[registry]]\nlocation = "second.example"\n')
    conf = load(
        etc, home, CONTAINERS_REGISTRIES_CONF=str(first), REGISTRIES_CONFIG_PATH=str(second)
    )
    assert conf.files == (first,)


def test_a_named_file_must_exist_a_default_one_need_not(
    etc: Path, home: Path, tmp_path: Path
) -> None:
    assert load(etc, home).files == ()
    missing = tmp_path / "nowhere.conf"
    with pytest.raises(ConfigError, match=r"nowhere\.conf.*CONTAINERS_REGISTRIES_CONF"):
        load(etc, home, CONTAINERS_REGISTRIES_CONF=str(missing))


def test_an_unreadable_file_is_a_config_error(etc: Path, home: Path) -> None:
    # A directory where the file should be: unreadable even to root.
    (etc / "containers" / "registries.conf").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"cannot read .*registries\.conf"):
        load(etc, home)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_a_file_without_read_permission_is_a_config_error(etc: Path, home: Path) -> None:
    system_file(etc, "").chmod(0)
    with pytest.raises(ConfigError, match="cannot read"):
        load(etc, home)


def test_a_file_where_the_drop_in_directory_would_be_means_no_drop_ins(
    etc: Path, home: Path
) -> None:
    write(etc / "containers" / "registries.conf.d", "[[[ not read")  # as containers/image
    assert load(etc, home).files == ()


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists a mode-000 directory")
def test_an_unreadable_drop_in_directory_is_a_config_error(etc: Path, home: Path) -> None:
    (etc / "containers" / "registries.conf.d").mkdir(parents=True)
    (etc / "containers" / "registries.conf.d").chmod(0)
    with pytest.raises(ConfigError, match="cannot read"):
        load(etc, home)


# --------------------------------------------------------------------------------------------
# what is refused, naming the file


def test_bad_toml_names_the_file_and_the_line(etc: Path, home: Path) -> None:
    path = system_file(etc, '[[registry]]\nlocation = "quay.io"\ninsecure = yes\n')
    with pytest.raises(ConfigError) as raised:
        load(etc, home)
    assert str(path) in str(raised.value)
    assert "line 3" in str(raised.value)


def test_bad_toml_in_a_drop_in_names_the_drop_in(etc: Path, home: Path) -> None:
    system_file(etc, "")
    bad = write(etc / "containers" / "registries.conf.d" / "z.conf", "[aliases\n")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        load(etc, home)


def test_text_that_is_not_utf8_is_a_config_error(etc: Path, home: Path) -> None:
    (etc / "containers").mkdir()
    (etc / "containers" / "registries.conf").write_bytes(b'[aliases]\n"a" = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(etc, home)


BAD_FILES = {
    "insecure not a bool": '[[registry]]\nlocation = "q.io"\ninsecure = "yes"\n',
    "blocked not a bool": '[[registry]]\nlocation = "q.io"\nblocked = 1\n',
    "location not a string": "[[registry]]\nlocation = 5\n",
    "prefix not a string": '[[registry]]\nprefix = ["q.io"]\nlocation = "q.io"\n',
    "registry not an array": 'registry = "q.io"\n',
    "registry not tables": 'registry = ["q.io"]\n',
    "mirror not an array": '[[registry]]\nlocation = "q.io"\nmirror = "m.io"\n',
    "mirror insecure not a bool": '[[registry]]\nlocation = "q.io"\n[[registry.mirror]]\nlocation = "m.io"\ninsecure = "true"\n',
    "mirror without location": '[[registry]]\nlocation = "q.io"\n[[registry.mirror]]\ninsecure = true\n',
    "pull-from-mirror unknown": '[[registry]]\nlocation = "q.io"\n[[registry.mirror]]\nlocation = "m.io"\npull-from-mirror = "sometimes"\n',
    "pull-from-mirror on a registry": '[[registry]]\nlocation = "q.io"\npull-from-mirror = "all"\n',
    "pull-from-mirror with mirror-by-digest-only": '[[registry]]\nlocation = "q.io"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.io"\npull-from-mirror = "tag-only"\n',
    "neither prefix nor location": "[[registry]]\ninsecure = true\n",
    "a prefix without location": '[[registry]]\nprefix = "q.io"\n',
    "a location with a scheme": '[[registry]]\nlocation = "https://q.io"\n',
    "a prefix with a scheme": '[[registry]]\nprefix = "http://q.io"\nlocation = "q.io"\n',
    "a mirror with a scheme": '[[registry]]\nlocation = "q.io"\n[[registry.mirror]]\nlocation = "http://m.io"\n',
    "a location that is not a host": '[[registry]]\nlocation = "exa mple.com"\n',
    "a port out of range": '[[registry]]\nlocation = "q.io:99999"\n',
    "a location path not a repository": '[[registry]]\nlocation = "q.io/Upper/Case"\n',
    "a wildcard with a path": '[[registry]]\nprefix = "*.example.com/foo"\n',
    "a wildcard with a port": '[[registry]]\nprefix = "*.example.com:5000"\n',
    "a wildcard inside": '[[registry]]\nprefix = "example.*.com"\nlocation = "q.io"\n',
    "two wildcards": '[[registry]]\nprefix = "**.example.com"\n',
    "conflicting insecure": '[[registry]]\nprefix = "a.io"\nlocation = "q.io"\ninsecure = true\n[[registry]]\nprefix = "b.io"\nlocation = "q.io"\n',
    "conflicting blocked": '[[registry]]\nlocation = "q.io"\nblocked = true\n[[registry]]\nlocation = "q.io"\n',
    "aliases not a table": 'aliases = "alpine"\n',
    "an alias value not a string": "[aliases]\nalpine = 5\n",
    "an alias name with a registry": '[aliases]\n"docker.io/alpine" = "docker.io/library/alpine"\n',
    "an alias name of localhost": '[aliases]\n"localhost/x" = "quay.io/x"\n',
    "an alias name with a tag": '[aliases]\n"alpine:3" = "docker.io/library/alpine"\n',
    "an alias name in upper case": '[aliases]\n"Alpine" = "docker.io/library/alpine"\n',
    "an alias value without registry": '[aliases]\nalpine = "library/alpine"\n',
    "an alias value with a tag": '[aliases]\nalpine = "docker.io/library/alpine:3"\n',
    "an alias value with a digest": f'[aliases]\nalpine = "docker.io/library/alpine@sha256:{"a" * 64}"\n',
    "an alias value without repository": '[aliases]\nalpine = "quay.io"\n',
    "v1 and v2 mixed": '[registries.insecure]\nregistries = ["q.io"]\n[[registry]]\nlocation = "r.io"\n',
    "v1 list not an array": '[registries.block]\nregistries = "q.io"\n',
    "v1 entry not a string": "[registries.block]\nregistries = [5]\n",
    "v1 entry with a scheme": '[registries.insecure]\nregistries = ["http://q.io"]\n',
}


@pytest.mark.parametrize("text", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_value_is_a_config_error_naming_the_file(etc: Path, home: Path, text: str) -> None:
    path = system_file(etc, text)
    with pytest.raises(ConfigError) as raised:
        load(etc, home)
    assert str(path) in str(raised.value)


def test_a_drop_in_must_be_v2(etc: Path, home: Path) -> None:
    system_file(etc, '[registries.insecure]\nregistries = ["q.io"]\n')  # v1 main file: fine
    drop_in = write(
        etc / "containers" / "registries.conf.d" / "v1.conf",
        '[registries.block]\nregistries = ["r.io"]\n',
    )
    with pytest.raises(ConfigError, match=f"{re.escape(str(drop_in))}.*v2"):
        load(etc, home)


def test_keys_regfs_does_not_know_are_ignored(etc: Path, home: Path) -> None:
    conf = conf_of(
        etc,
        home,
        'credential-helpers = ["pass"]\nshort-name-mode = "enforcing"\n'
        '[[registry]]\nlocation = "q.io"\nsome-future-key = 1\n'
        '[[registry.mirror]]\nlocation = "m.io"\nanother = "x"\n',
    )
    assert conf.settings("q.io").mirrors == (MirrorSettings("m.io", False, "all"),)


# --------------------------------------------------------------------------------------------
# the v1 format


def test_v1_insecure_and_block_lists_are_honoured(
    etc: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "regfs.registry.registries_conf"):
        conf = conf_of(
            etc,
            home,
            "[registries.search]\nregistries = ['registry1.com']\n"
            "[registries.insecure]\nregistries = ['registry3.com:5000', 'both.example']\n"
            "[registries.block]\nregistries = ['registry.untrusted.com', 'both.example']\n",
        )
    assert conf.settings("registry3.com:5000").insecure
    assert conf.settings("registry.untrusted.com").blocked
    both = conf.settings("both.example")
    assert (both.insecure, both.blocked) == (True, True)
    assert not conf.settings("registry1.com").configured  # search lists are not honoured
    assert conf.configured() == ["registry3.com:5000"]
    assert "registries.search is ignored" in caplog.text


# --------------------------------------------------------------------------------------------
# [aliases]


def test_aliases_are_normalized_and_overridden_by_drop_ins(etc: Path, home: Path) -> None:
    system_file(
        etc,
        '[aliases]\n"alpine" = "docker.io/alpine"\n"busybox" = "index.docker.io/busybox"\n'
        '"fedora" = "registry.fedoraproject.org/fedora"\n"centos" = "quay.io/centos/centos"\n'
        '"team/tool" = "localhost:5000/team/tool"\n',
    )
    write(
        etc / "containers" / "registries.conf.d" / "x.conf",
        '[aliases]\n"fedora" = ""\n"centos" = "quay.io/centos/stream"\n',
    )
    conf = load(etc, home)
    assert conf.alias("alpine") == "docker.io/library/alpine"
    assert conf.alias("busybox") == "docker.io/library/busybox"
    assert conf.alias("fedora") is None  # erased by the drop-in
    assert conf.alias("centos") == "quay.io/centos/stream"
    assert conf.alias("team/tool") == "localhost:5000/team/tool"
    assert conf.alias("nothing") is None


def test_the_files_this_system_ships_parse(tmp_path: Path) -> None:
    system = Path("/etc/containers")
    if not (system / "registries.conf").exists() and not (system / "registries.conf.d").is_dir():
        pytest.skip("no containers configuration on this system")
    conf = RegistriesConf.load({"HOME": str(tmp_path)})
    assert conf.files  # at least one of them was read
    for value in conf.aliases.values():
        assert value is None or value.count("/") >= 1


# --------------------------------------------------------------------------------------------
# certs.d


def test_ca_files_come_from_the_first_certs_dir_that_has_the_host(etc: Path, home: Path) -> None:
    user = home / ".config" / "containers" / "certs.d" / "reg.example:5000"
    for name in ("ca.crt", "b-extra.crt", "client.cert", "client.key"):
        write(user / name, "x")
    write(etc / "containers" / "certs.d" / "reg.example:5000" / "other.crt", "x")
    hub = write(etc / "docker" / "certs.d" / "docker.io" / "ca.crt", "x")
    mirror_ca = write(etc / "containers" / "certs.d" / "mirror.local" / "ca.crt", "x")
    remapped = write(etc / "docker" / "certs.d" / "target.example" / "ca.crt", "x")
    write(home / ".config" / "containers" / "stray.crt", "x")  # what ".." would find
    system_file(
        etc,
        '[[registry]]\nlocation = "reg.example:5000"\n[[registry.mirror]]\nlocation = "mirror.local"\n'
        '[[registry]]\nprefix = "source.example"\nlocation = "target.example"\n',
    )
    conf = load(etc, home)
    found = conf.settings("reg.example:5000")
    assert found.ca_files == (user / "b-extra.crt", user / "ca.crt")  # only *.crt, sorted
    assert found.mirrors[0].ca_files == (mirror_ca,)
    assert conf.settings("registry-1.docker.io").ca_files == (hub,)  # docker.io's directory
    assert conf.settings("source.example").ca_files == (remapped,)  # where it connects
    assert conf.settings("reg.example").ca_files == ()  # the port is part of the name
    assert conf.settings("..").ca_files == ()  # not a host: no directory is looked at


# --------------------------------------------------------------------------------------------
# properties: any file is read or refused with ConfigError; any name gets settings

PROPERTY = settings(
    max_examples=150,
    deadline=timedelta(milliseconds=500),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_hosts = st.sampled_from(
    ["q.io", "Q.IO", "docker.io", "*.example.com", "*.", "localhost:5000", "[::1]:5000", "a/b",
     "q.io/repo", "q.io/repo:tag", "", " ", "http://x", "q.io:0", "ex ample", "q.io/", "*.a:1"]
)  # fmt: skip
_junk = st.one_of(
    _hosts,
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.booleans(),
    st.integers(-3, 3),
    st.lists(_hosts, max_size=2),
    st.sampled_from(["all", "digest-only", "tag-only", "none"]),
)
_locations = st.sampled_from(["q.io", "m.local:5000", "q.io/ns", "docker.io", "[::1]:5000"])
_flags = st.booleans()
# Mostly values of the right kind, so that most files are valid and what they say is
# asked; sometimes anything at all.
_REGISTRY_VALUES = {
    "location": _locations,
    "prefix": st.sampled_from(["q.io", "*.example.com", "docker.io/library/x", "localhost:5000"]),
    "insecure": _flags,
    "blocked": _flags,
    "mirror-by-digest-only": _flags,
}
_MIRROR_VALUES = {
    "location": _locations,
    "insecure": _flags,
    "pull-from-mirror": st.sampled_from(["all", "digest-only", "tag-only"]),
}


def _toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings, numbers, arrays are TOML too


@st.composite
def _table(draw: st.DrawFn, values: dict[str, st.SearchStrategy[object]]) -> list[str]:
    """A table that usually has a location and right-typed values; now and then a key
    that is wrong where it is, or a value of any kind."""
    keys = ["location", *draw(st.lists(st.sampled_from(list(values)), unique=True, max_size=3))]
    if draw(st.integers(0, 5)) == 0:
        keys.remove("location")
    if draw(st.integers(0, 5)) == 0:
        keys.append(draw(st.sampled_from(["pull-from-mirror", "x"])))
    lines = []
    for key in dict.fromkeys(keys):
        right = values.get(key)
        wrong = right is None or draw(st.integers(0, 7)) == 0
        value = draw(_junk if wrong or right is None else right)
        lines.append(f"{json.dumps(key)} = {_toml(value)}")
    return lines


@st.composite
def _config_texts(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        lines += ["[[registry]]", *draw(_table(_REGISTRY_VALUES))]
        for _ in range(draw(st.integers(0, 2))):
            lines += ["[[registry.mirror]]", *draw(_table(_MIRROR_VALUES))]
    if draw(st.booleans()):
        lines.append("[aliases]")
        names = st.sampled_from(["alpine", "a/b", "alpine", "q.io/x"])
        targets = st.one_of(st.sampled_from(["docker.io/alpine", "q.io/a/b", ""]), _junk)
        for key, value in draw(st.dictionaries(names, targets, max_size=2)).items():
            lines.append(f"{json.dumps(key)} = {_toml(value)}")
    return "\n".join(lines) + "\n"


@PROPERTY
@given(text=_config_texts(), names=st.lists(st.one_of(_hosts, st.text(max_size=10)), max_size=3))
def test_any_file_is_read_or_refused_with_a_config_error(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    try:
        conf = RegistriesConf.load(
            {"CONTAINERS_REGISTRIES_CONF": str(path), "HOME": str(tmp_path)},
            etc=tmp_path / "no-etc",
        )
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert conf.files == (path,)
    for name in [*names, *conf.configured()]:
        found = conf.settings(name)
        assert found.configured or (found.location, found.mirrors) == (found.name, ())
        assert all(m.pull_from_mirror in ("all", "digest-only", "tag-only") for m in found.mirrors)
    for listed in conf.configured():
        assert conf.settings(listed).configured and not conf.settings(listed).blocked


_label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?\Z")
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)


@PROPERTY
@given(host=_domain, sub=_domain, port=st.integers(1, 65535), repo=_label)
def test_prefix_matching_properties(
    tmp_path: Path, host: str, sub: str, port: int, repo: str
) -> None:
    assume(not {host, f"{sub}.{host}"} & DOCKER_HUB_NAMES)  # those all mean docker.io
    path = tmp_path / "registries.conf"
    path.write_text(
        f'[[registry]]\nlocation = "{host}"\ninsecure = true\n'
        f'[[registry]]\nprefix = "*.{host}"\nblocked = true\n'
    )
    conf = RegistriesConf.load(
        {"CONTAINERS_REGISTRIES_CONF": str(path), "HOME": str(tmp_path)}, etc=tmp_path
    )
    for name in (host, f"{host}:{port}"):
        found = conf.settings(name)
        assert (found.insecure, found.blocked) == (True, False), name
    for name in (f"{sub}.{host}", f"{sub}.{host}:{port}"):
        assert conf.settings(name).blocked, name
    assert conf.repository_blocked(f"{sub}.{host}", repo)
    assert not conf.repository_blocked(host, repo)
    assert not conf.settings(f"x{host}").configured


# --------------------------------------------------------------------------------------------
# the same decisions as containers/image itself (skopeo)

SKOPEO_CONF = """
[[registry]]
location = "127.0.0.1"
blocked = true

[[registry]]
location = "127.0.0.1:5999/ok"

[[registry]]
location = "127.0.0.2:5000/team/secret"
blocked = true

[[registry]]
location = "127.0.0.3:5000"
blocked = true
"""
SKOPEO_DROP_IN = '[[registry]]\nlocation = "127.0.0.3:5000"\n'  # unblocks it again
# Only loopback literals: a reference skopeo does not block, it connects to.
SKOPEO_REFERENCES = [
    "127.0.0.1/x/y",
    "127.0.0.1:5998/x/y",  # a host prefix covers the host's other ports
    "127.0.0.1:5999/ok/y",  # the longer prefix unblocks
    "127.0.0.1:5999/okay/y",  # ... only at a path boundary
    "127.0.0.2:5000/team/secret/tool",
    "127.0.0.2:5000/team/public",
    "127.0.0.3:5000/x/y",  # the drop-in replaced the table with that prefix
]


@pytest.mark.registry
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_blocked_decisions_are_those_of_skopeo(tmp_path: Path) -> None:
    main = write(tmp_path / "registries.conf", SKOPEO_CONF)
    write(tmp_path / "home/.config/containers/registries.conf.d/10.conf", SKOPEO_DROP_IN)
    env = {"HOME": str(tmp_path / "home"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    conf = RegistriesConf.load({**env, "CONTAINERS_REGISTRIES_CONF": str(main)}, etc=tmp_path)
    ours, theirs = {}, {}
    for reference in SKOPEO_REFERENCES:
        host, _, repository = reference.partition("/")
        ours[reference] = conf.repository_blocked(host, repository)
        done = subprocess.run(
            ["skopeo", "--registries-conf", str(main), "inspect", "--retry-times", "0",
             "--tls-verify=false", f"docker://{reference}"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode != 0, done.stdout  # nothing listens there: never a success
        theirs[reference] = "is blocked in" in done.stderr
    assert ours == theirs
    assert sorted(r for r, blocked in ours.items() if blocked) == [
        "127.0.0.1/x/y",
        "127.0.0.1:5998/x/y",
        "127.0.0.1:5999/okay/y",
        "127.0.0.2:5000/team/secret/tool",
    ]
    # A whole registry is blocked by its host's table alone: stricter than podman where a
    # longer prefix unblocks a repository inside it (127.0.0.1:5999/ok).
    assert conf.settings("127.0.0.1:5999").blocked
