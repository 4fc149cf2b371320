#!/usr/bin/env python3
"""The layering test: fails if a library reaches past its neighbour.

The layers are README.md's "How it fits together". Three kinds of evidence, three groups of rules:

  link     each library's link closure (layers.txt, written by tests/layering/CMakeLists.txt at
           configure time): e.g. diffusiond_core_base must not link Boost, diffusiond_http,
           diffusiond_pipeline or LibTorch.
  headers  the headers each library's objects were really compiled with (ninja's deps log, or
           the *.o.d files other generators keep): e.g. no torch/ATen/c10 header in the api,
           media, text or core_base objects; no boost/beast or boost/asio header in them.
  includes the #include lines of the sources on disk: e.g. http/ includes no daemon header but
           the api's (daemon/api/), and nothing under http/, daemon/api/, pipeline/media/ or
           pipeline/text/ includes LibTorch.

Every broken rule is printed as "FAIL [rule] where: what"; the exit status is 1 if any broke.
Usage: check_layers.py --source-dir SRC --build-dir BUILD --layers BUILD/.../layers.txt
                       --generator "Ninja" --make-program /usr/bin/ninja
"""

import argparse
import os
import re
import subprocess
import sys

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)

TORCH_HEADER_DIRS = ("torch", "ATen", "c10", "caffe2")


def is_torch_include(name):
    return name.split("/", 1)[0] in TORCH_HEADER_DIRS


def is_net_include(name):
    return re.match(r"boost/(beast|asio)(/|\.hpp$)", name) is not None


def is_torch_header_path(path):
    return re.search(r"(^|/)(torch|ATen|c10|caffe2)/", path) is not None


def is_net_header_path(path):
    return re.search(r"/boost/(beast|asio)(/|\.hpp$)", path) is not None


def is_torch_link(item):
    return (item in ("torch", "torch_library", "torch_cpu", "torch_cpu_library", "torch_cuda",
                     "torch_cuda_library", "c10", "c10_cuda", "caffe2::mkl")
            or re.search(r"\$<TARGET_(FILE|PROPERTY):torch", item) is not None
            or re.search(r"(^|/)lib(torch|c10)[^/]*\.(so|a)", item) is not None)


def is_boost_link(item):
    return item.startswith("Boost::") or re.search(r"(^|/)libboost_", item) is not None


# --- link rules: library -> [(rule name, predicate on one closure item, what it means)] --------

def project_lib(*allowed):
    allowed = set(allowed)
    return lambda item: item.startswith("diffusiond_") and item not in allowed


LINK_RULES = {
    "diffusiond_api": [
        ("api-links-nothing", lambda i: is_torch_link(i) or is_boost_link(i)
         or project_lib()(i), "the api links no other library"),
    ],
    "diffusiond_api_json": [
        ("api-json-links-api-only", lambda i: is_torch_link(i) or is_boost_link(i)
         or project_lib("diffusiond_api")(i), "diffusiond_api_json links the api and nlohmann/json"),
    ],
    "diffusiond_media": [
        ("media-torch-free", is_torch_link, "diffusiond_media never links LibTorch"),
        ("media-no-boost", is_boost_link, "diffusiond_media never links Boost"),
        ("media-links-no-layer", project_lib(), "diffusiond_media links no other diffusiond library"),
    ],
    "diffusiond_text": [
        ("text-torch-free", is_torch_link, "diffusiond_text never links LibTorch"),
        ("text-no-boost", is_boost_link, "diffusiond_text never links Boost"),
        ("text-links-media-only", project_lib("diffusiond_media"),
         "diffusiond_text links only diffusiond_media of the project"),
    ],
    "diffusiond_pipeline": [
        ("pipeline-no-core-no-http", project_lib("diffusiond_media", "diffusiond_text"),
         "diffusiond_pipeline links only diffusiond_media and diffusiond_text of the project"),
        ("pipeline-no-boost", is_boost_link, "diffusiond_pipeline never links Boost"),
    ],
    "diffusiond_core_base": [
        ("core-base-torch-free", is_torch_link, "diffusiond_core_base never links LibTorch"),
        ("core-base-no-beast", is_boost_link, "diffusiond_core_base never links Boost (Beast)"),
        ("core-base-no-http-no-pipeline",
         project_lib("diffusiond_api", "diffusiond_api_json", "diffusiond_media"),
         "diffusiond_core_base links only the api and diffusiond_media of the project"),
    ],
    "diffusiond_http": [
        ("http-torch-free", is_torch_link, "diffusiond_http never links LibTorch"),
        ("http-api-only", project_lib("diffusiond_api", "diffusiond_api_json", "diffusiond_web"),
         "diffusiond_http links only the api (and diffusiond_web) of the project"),
    ],
}


# --- header rules: library -> [(rule name, predicate on (header, source dir, build dir), meaning)]
# Files under the build folder (precompiled headers, generated sources) are not project headers.

def project_header_outside(*allowed_dirs):
    def check(path, src, build):
        if not path.startswith(src + "/") or path.startswith(build + "/"):
            return False
        rel = path[len(src) + 1:]
        return not any(rel.startswith(d + "/") for d in allowed_dirs)
    return check


def torch_header(path, src, build):
    return is_torch_header_path(path)


def net_header(path, src, build):
    return is_net_header_path(path)


HEADER_RULES = {
    "diffusiond_api": [
        ("api-torch-free", torch_header, "a LibTorch header"),
        ("api-no-beast", net_header, "a Boost.Beast/Asio header"),
        ("api-includes-api-only", project_header_outside("daemon/api"),
         "a project header outside daemon/api/"),
    ],
    "diffusiond_api_json": [
        ("api-torch-free", torch_header, "a LibTorch header"),
        ("api-no-beast", net_header, "a Boost.Beast/Asio header"),
        ("api-includes-api-only", project_header_outside("daemon/api"),
         "a project header outside daemon/api/"),
    ],
    "diffusiond_media": [
        ("media-torch-free", torch_header, "a LibTorch header"),
        ("media-no-beast", net_header, "a Boost.Beast/Asio header"),
        ("media-includes-media-only", project_header_outside("pipeline/media"),
         "a project header outside pipeline/media/"),
    ],
    "diffusiond_text": [
        ("text-torch-free", torch_header, "a LibTorch header"),
        ("text-no-beast", net_header, "a Boost.Beast/Asio header"),
        ("text-includes-text-and-media-only",
         project_header_outside("pipeline/text", "pipeline/media"),
         "a project header outside pipeline/text/ and pipeline/media/"),
    ],
    "diffusiond_core_base": [
        ("core-base-torch-free", torch_header, "a LibTorch header"),
        ("core-base-no-beast", net_header, "a Boost.Beast/Asio header"),
        ("core-base-no-http-no-pipeline", project_header_outside("daemon", "pipeline/media"),
         "a project header outside daemon/ and pipeline/media/"),
    ],
    "diffusiond_http": [
        ("http-torch-free", torch_header, "a LibTorch header"),
        ("http-api-only", project_header_outside("http", "daemon/api", "web"),
         "a project header outside http/, daemon/api/ and web/"),
    ],
}

# --- include rules: folder -> [(rule name, predicate on an #include name, meaning)] -------------
# A folder's rules apply to every .h/.cpp/.inc below it.

INCLUDE_RULES = {
    "http": [
        ("http-api-only", lambda n: n.startswith("daemon/") and not n.startswith("daemon/api/"),
         "a daemon header other than the api's (daemon/api/)"),
        ("http-no-pipeline", lambda n: n.startswith("pipeline/"), "a pipeline header"),
        ("http-torch-free", is_torch_include, "a LibTorch header"),
    ],
    "daemon/api": [
        ("api-torch-free", is_torch_include, "a LibTorch header"),
        ("api-no-beast", is_net_include, "a Boost.Beast/Asio header"),
        ("api-includes-api-only", lambda n: re.match(r"(daemon|http|pipeline|web)/", n)
         is not None and not n.startswith("daemon/api/"), "a project header outside daemon/api/"),
    ],
    "pipeline/media": [
        ("media-torch-free", is_torch_include, "a LibTorch header"),
        ("media-no-beast", is_net_include, "a Boost.Beast/Asio header"),
        ("media-includes-media-only", lambda n: re.match(r"(daemon|http|pipeline|web)/", n)
         is not None and not n.startswith("pipeline/media/"),
         "a project header outside pipeline/media/"),
    ],
    "pipeline/text": [
        ("text-torch-free", is_torch_include, "a LibTorch header"),
        ("text-no-beast", is_net_include, "a Boost.Beast/Asio header"),
        ("text-includes-text-and-media-only", lambda n: re.match(r"(daemon|http|pipeline|web)/", n)
         is not None and not re.match(r"pipeline/(text|media)/", n),
         "a project header outside pipeline/text/ and pipeline/media/"),
    ],
}

# diffusiond_core_base's own sources (from layers.txt) get these.
CORE_BASE_INCLUDE_RULES = [
    ("core-base-torch-free", is_torch_include, "a LibTorch header"),
    ("core-base-no-beast", is_net_include, "a Boost.Beast/Asio header"),
    ("core-base-no-http-no-pipeline", lambda n: re.match(r"(http|pipeline|web)/", n) is not None
     and not n.startswith("pipeline/media/"), "a header of http/, web/ or the pipeline but media"),
]


def read_layers(path):
    layers = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(" ")
            if key == "target":
                current = layers.setdefault(value, {})
            elif current is not None:
                current[key] = [v for v in value.split(";") if v] if key != "objects" else value
    return layers


def ninja_deps(build_dir, make_program):
    """{object path relative to the build dir: [header paths]} from ninja's deps log."""
    out = subprocess.run([make_program or "ninja", "-C", build_dir, "-t", "deps"],
                         check=True, capture_output=True, text=True).stdout
    deps = {}
    current = None
    for line in out.splitlines():
        if not line.strip():
            current = None
        elif not line.startswith(" "):
            current = deps.setdefault(line.split(":", 1)[0], [])
        elif current is not None:
            current.append(line.strip())
    return deps


def depfile_deps(build_dir, object_dir):
    """The same from *.o.d make-style depfiles (Makefile generators keep them)."""
    deps = {}
    root = os.path.join(build_dir, object_dir)
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".o.d"):
                continue
            with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                text = f.read().replace("\\\n", " ")
            _, _, rest = text.partition(":")
            rel = os.path.relpath(os.path.join(dirpath, name[:-2]), build_dir)
            deps[rel] = rest.split()
    return deps


def includes_of(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return [m.group(2) for m in INCLUDE_RE.finditer(f.read())]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--layers", required=True)
    parser.add_argument("--generator", default="Ninja")
    parser.add_argument("--make-program", default="ninja")
    args = parser.parse_args()
    src = os.path.realpath(args.source_dir)
    build = os.path.realpath(args.build_dir)

    failures = []

    def fail(rule, where, what):
        failures.append(f"FAIL [{rule}] {where}: {what}")

    # 1. link closures
    layers = read_layers(args.layers)
    for target, rules in LINK_RULES.items():
        if target not in layers:
            fail("layers-file", args.layers, f"{target} is missing (reconfigure)")
            continue
        for item in layers[target].get("links", []):
            for rule, bad, meaning in rules:
                if bad(item):
                    fail(rule, f"target {target}", f"links {item} ({meaning})")

    # 2. headers the objects were compiled with
    all_deps = ninja_deps(build, args.make_program) if "Ninja" in args.generator else None
    objects_checked = 0
    for target, rules in HEADER_RULES.items():
        if target not in layers:
            continue
        object_dir = layers[target]["objects"].rstrip("/") + "/"
        if all_deps is not None:
            deps = {o: d for o, d in all_deps.items() if o.startswith(object_dir)}
        else:
            deps = depfile_deps(build, object_dir)
        # A precompiled header's (cmake_pch.hxx.gch) dependencies count like any object's.
        sources = [s for s in layers[target].get("sources", []) if s.endswith(".cpp")]
        objects = [o for o in deps if o.endswith(".o")]
        if len(objects) < len(sources):
            fail("headers-known", f"target {target}",
                 f"dependency information for {len(objects)} of {len(sources)} objects "
                 "(build everything before running this test)")
        for obj, headers in sorted(deps.items()):
            objects_checked += 1
            for header in headers:
                path = os.path.realpath(header if os.path.isabs(header)
                                        else os.path.join(build, header))
                for rule, bad, meaning in rules:
                    if bad(path, src, build):
                        fail(rule, f"target {target}, object {obj}",
                             f"compiled with {path} ({meaning})")

    # 3. #include lines of the sources
    files_checked = 0
    for folder, rules in INCLUDE_RULES.items():
        for dirpath, _, files in os.walk(os.path.join(src, folder)):
            for name in sorted(files):
                if not name.endswith((".h", ".cpp", ".inc")):
                    continue
                path = os.path.join(dirpath, name)
                files_checked += 1
                for include in includes_of(path):
                    for rule, bad, meaning in rules:
                        if bad(include):
                            fail(rule, os.path.relpath(path, src),
                                 f'#include "{include}" ({meaning})')
    core_base = layers.get("diffusiond_core_base", {}).get("sources", [])
    for path in core_base:
        headers = [path]
        header = os.path.splitext(path)[0] + ".h"
        if os.path.exists(header):
            headers.append(header)
        for file in headers:
            files_checked += 1
            for include in includes_of(file):
                for rule, bad, meaning in CORE_BASE_INCLUDE_RULES:
                    if bad(include):
                        fail(rule, os.path.relpath(file, src), f'#include "{include}" ({meaning})')

    for line in failures:
        print(line)
    print(f"layering: {len(layers)} libraries' link closures, {objects_checked} objects' headers, "
          f"{files_checked} files' #include lines checked: "
          + (f"{len(failures)} problem(s)" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
