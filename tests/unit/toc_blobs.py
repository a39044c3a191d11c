"""Two real TOC layers, recorded here so unit tests need no producer and no network: the same
tar (layer 3 of tests/fixtures/toc_images.py's rootfs/toc: a file, a GNU long name, a
symlink, directories) converted to eStargz by `ctr-remote image convert --estargz --oci`
(stargz-snapshotter 0.12, Debian) and to zstd:chunked by `skopeo copy
--dest-compress-format zstd:chunked` (skopeo 1.9.3, Debian), with their layer annotations.
"""

from __future__ import annotations

import base64

ESTARGZ_BLOB = base64.b64decode(
    "H4sIAAAAAAAC/9LLy9crKEpNSy1JztDLScxLyU0symagLjCAAFy0gYGBIRLbgMHA0NjQzIhBwYCBDqC0uCSxiMHA"
    "gNqeHCIAEAAA//+/NNveAAIAAB+LCAAAAAAAAv/iZxgFIxmkliTr5xfrFqXmpCYWp9LGDgMDAwMzExMwbWBggE4b"
    "GJgZMBiamBqZmJsbmBgYMxgYGpqbGDMoGNAjAEqLSxKLFBSo4klkzw0RAAgAAP//7ewoMgAEAAAfiwgAAAAAAAL/"
    "8nP0dbVVKkpNTytWKEktLlHi8nSxBXO5wlyDgj39/eI9XWwNuXwcI12DbI25GEbBsAI5+Xnp+jS2w8DAwMDc1BRM"
    "GxgYoNNgtqGJqZGJubmBiYExg4GhgaGpIYOCKT0CoLS4JLFIQYEqnkT23BABevp6+g4++XnpPpl52TSMfyzxDo9/"
    "YyMjlLRgYGBubmrEoOAzlOJ/KOf/9LxS3eGA8xJzU0eL9EEX/6BMbWZigrv8NzVCLf+NDU1NjBkUDEbLf5oDQAAA"
    "AP//42Q0IAAKAAAfiwgAAAAAAAL/SlRw9wtV0NPX03fwyc9L98nMy1ZIzSspqlTIyM9JKVYoycgsVshLzE3lYhgF"
    "wxAAAgAA//9CK8rxAAIAAB+LCAAAAAAAAv/slM+KgzAQxudR8gImk3/Ode/rS7hryMrKCKnS1y/W0oMgeGgEW3+X"
    "+cglJL98kUqqr6rnWLX8D3nAmbWJ1upnnteJvAbxDTswXoY6CQEfipRqqFMMQ/FGI3ADJ5voeo4q8lhM4XF/OfpP"
    "RKv9n7J23jgidGgBbanJgjB7PM5X9X95uIOQwk+fWGXd4+7f++3+NXrUIPyR/v9j++dwLX7/2q7J5b90bt2/swv/"
    "xkz9x9N/dm4BAAD//y2jagkACgAAH4sIAAAAAAAC/+yRSwoCQQxEs/YUdQMrdsY5T2wDDn7JtMjcXnQlrlVQfJu3"
    "DC/VNoH1kFHbMSdU3wdWXrcYDtj5FIkykz+/y3jx0/y2+BtvkOTS7G6Szya1E7VuYX1PYxGqkkXATzzgPDZP4CWR"
    "j3FfwjUAAP//Chni/wAEAAAfiwgAAAAAAAL/SlRIy8xJVUhMT8zM42IYBSMNAAIAAP//v6HyfAACAAAfiwgAAAAA"
    "AAL/7JVPbxoxEMW5Lp8C7TmA7bG9Y84999RTqx7G9hi2AW+0u2maRPnuFX9SqWkAtdBKjXgS2mVkP69/emN3PbXz"
    "h0mdI3+bfOmaPDi/xFb7nlob/fy+rUtlpByMxOAf6HZNYCDEuTf5n+hxWJRfue3qJpezkbwaFiXnvq25K2ejT8Oi"
    "eBwWRVFmWnE5G5WT3ExuWk7ch8VkSTmuqL0urzZj+vubzZiW57tKVz/wzrUoyialjvtyNkKzLcR6zt26UHYLUsbO"
    "YhDsAliDJAk4Sg5Oq0pH9NI5ZYIDluR9FaMn5bRTQNH5yCASBo+7ZcPiNl+/O7v5sCiern4hwn2YNt245SVTx8dQ"
    "aNz+XTWxr7cGSigYSzmW+oNSMwkzBR/LH6M2k5R4QVAi7kHojfYyqiBscF4HZR2G9ddbQSgFxFCBUd4nUBDZVQFc"
    "BCWNDVajs8IcRHiy+esIl02eT1+Qi3Vb/gkqBwfWmOfb8Vv4bTZ1LGnqLEnTotqTNGGlBwGBHMUEpEA6QxScdqjJ"
    "A0ontVYRpAECtFYBoFGSEEkZ6aqDSTvZ/EgK1i/j9dXH/QuQ3f1qWefr3wrfesL75xNyMt36jt/Qg3P8OShGytcJ"
    "t+ybNv/tbt6tkvluHBb1Mh5rBjBnaQaLck8zJBu1JcNVBMXRC6EgYoVOVtI6EBiDsYymAhYWbYQEKWlMwUA0rqLD"
    "x+7J5q9D7O7oZuopHL+/4Sz0ULg99KByTlXGBZWIkycvNflogGPgRAmt1UZ7DBoQUkgioSWqTApJG3Q+HKR3svma"
    "3rD4PHwaXHTRRRe9IX0PAAD///GfNJsAEAAAH4sIBAAAAAAA/xoAU0cWADAwMDAwMDAwMDAwMDAzNTNTVEFSR1oB"
    "AAD//wAAAAAAAAAA"
)
ZSTD_CHUNKED_BLOB = base64.b64decode(
    "KLUv/UQAAAEdAgAShAwSsDUBMq5PInQVFLlpyUbKyW3+NVNpZdGtZTO55RuhC8yRfv7/7935L2bCAdVIAhAWBgQA"
    "dEDxAS4dV5BamFwde04EFCi1L/0EAIEBAE5BTUU9InJlZ2ZzIHRlc3QiCklEPXJlZ2ZzClZFUlNJT05fSUQ9MQpM"
    "QVlFUj0zCpoKnzcotS/9ZNAITQQAYgcVF5CnAfQvPyWaz8KnpOaviEjp8hkJEocPX9FodNQBwpFEkqywbMi6jojf"
    "/xyUkvHfQQoWy7YApShF7wrHwZBUXY1B44tOI6ajkun//1+l8L+FZUMaEABgQOUDZnkGyDiEASKFOVDADeskwR11"
    "gLnqv2hjgFiMAZOiA4oP3nRcQeriJsiM6oRQghqoKLUv/QQAUQEAYSBHTlUgLi8uL0BMb25nTGluayBlbnRyeSBo"
    "b2xkcyB0aGlzIG5hbWUKDF7BsSi1L/1k1grVBQBCSh4cgKfNAGBynJw4dsNaRFYGBbJJQjKJ/D6gorggBZdDPCXM"
    "C4iBYMAcqC3KpST0otB/tCwRUIwoh6iJH56rJlFkuk9V/6+pxY5m1iaIOexCaxPkCqtMU4sdDZ1zpbCjGRwuoJwa"
    "qn9/Qvz/v0zj/wrWQFibEADQQecCFABgQOWuPOIAYDrgArABs8oPEJBRdzL+AJkCAiiRmgvj/QIxGaCMxFUJUoVC"
    "dEBx4E3qRSNWkHpwk0qjuiv8HzbYKLUv/QQAGQEAdGhlIGRpcmVjdG9yeSBjYW1lIGJhY2sgaW4gbGF5ZXIgMwqh"
    "jlHWKLUv/UQA3QItAgDSQwwToIkAoKBQl2OCUiLJP/knRAzUByQ6LkEUTjwte567WYOqYZn//9kK/yyIGwDjFoQB"
    "BQB0QPHBm44rSD3c1Nmojg3KOFZvKLUv/QQAaQAAYSBmaWxlIGFnYWluCtiX9eAotS/9BHhMAAAIAAFUAQIu7xEB"
    "AADeVnt6UCpNGOoBAAAotS/9ZN0G5Q4Acl9XIEAL7Ng4HfoV1EXxRqlECcwl5nnGDbcpk/YK87AqigsCC4NFSy2Z"
    "+XO8VPS4WjfjmKLH5VXOTy3FGMeO7/B3wdcqX7/4HdXdaupc2zzwfoiEZnCaW06tbm7BXR5ZxbhxIWOWftviZ8sh"
    "p3UsWzpuDFdTevB1YfvVTEEW1yqUhB8MvywN877JXHD5AwEAEIAM9HzS9HMcLIoCocFxapXT5nJpM3fq4l1ljLd3"
    "5UJVKl3yvlbslPPu5XK1N8J27Zv2JUt6KCyJsViHSBZG0SjQWKxKAaiMoOedGBlkoJWYY8WcrdSFbr25h6sb39O1"
    "zeGm5E6Mn7OzY+rqOWfJFeZT6yFsaScchKDH+USBnyydcCSlgSNTSo7z7o0MRLCKbCKqAyqPzGM1qfKwg+IgI6lC"
    "0EMGARnonX7FN4fDIPx5hF6QgZJvEII+oeFBDwUIcl5pnuWRkQhaGMVpfgE9BC4A4AwADAPPju6mbGJpqbFA5x7u"
    "RcvcxiB1TomWZiFfjBsW+gVV+MUBIkjDrNAGqUKvzjFFzUUqkBWA75UMMEYbcQYAhsEgFTZC4WoEENyJKtaC1FWw"
    "IdiEHRbUAMfF0lomsYug1gECR60FJOuu7qh0UzXEKWyXyIJg6gFORpdAUCpNGCgAAADkAgAAAAAAAOoBAAAAAAAA"
    "3QcAAAAAAAABAAAAAAAAAEduVWxJblV4"
)
ESTARGZ_ANNOTATIONS = {
    "containerd.io/snapshot/stargz/toc.digest": (
        "sha256:cd52696cf3f91d3943fb3ff3ecdab46cfe842d59690be76e784c2fba49aad832"
    ),
    "io.containers.estargz.uncompressed-size": "12800",
}
ZSTD_CHUNKED_ANNOTATIONS = {
    "io.containers.zstd-chunked.manifest-checksum": (
        "sha256:e8e0302ccbf40028021494bcc2830713faccc88f49305f1edd67735fa029d4e1"
    ),
    "io.containers.zstd-chunked.manifest-position": "740:490:2013:1",
}
