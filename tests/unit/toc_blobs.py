"""Real TOC layers, recorded here so unit tests need no producer and no network: the same
tar (layer 3 of tests/fixtures/toc_images.py's rootfs/toc: a file, a GNU long name, a
symlink, directories) converted to eStargz by `ctr-remote image convert --estargz --oci`
(stargz-snapshotter 0.12, Debian) and to zstd:chunked by `skopeo copy
--dest-compress-format zstd:chunked` (skopeo 1.9.3, Debian) and by `ctr-remote image convert
--zstdchunked --oci`, with their layer annotations.
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
# Layer 3 again, by `ctr-remote image convert --zstdchunked --oci` (stargz-snapshotter's
# zstd:chunked: the eStargz TOC fields in a skippable frame, both annotation sets).
CTR_ZSTD_CHUNKED_BLOB = base64.b64decode(
    "KLUv/UQAAAGNAgDkAi5uby5wcmVmZXRjaC5sYW5kbWFyawAwMDAwMQAAMDEzMTYyACAwdXN0YXIAMDANABOaFMAM"
    "YIMAQGCrGoCFoQ6aMAiJEgAMugICh10L6pphVh51KLUv/UQIAAO9AgCygwwTsCcBhC1BEnQVKCV5uROdSVgTKWbo"
    "ICnZqhTvrnJH7ED0avN/a/4znTQSBekQCiQLCAwAwAGACS4iArBBYBCBnJ1BB5SImQZAt3Jt40BMah/VYQGNzTCF"
    "KLUv/WQACZ0GANLIHR1AqwokO5FokPxBIRp2BDZRSfI3aR24IbNZFZ/5Aed9sNtz/UMY+H+o8VRAVenkdR3jv869"
    "L6pi0hpNAUMYwiw91FQ1b+v29n2HjxG6hu1/d/x/RmvE2PWksxySuZpUGERDYArOYlhSYdZBTRDFU4JC0iGXQdIE"
    "IABgQOUDZplWEDgvCAsDRAoVUkBbXBQJ7ogGyC3QAAU1QKAAMhiJGQQWfBAEzXTgQQhAsjc9aEcBFoANAgEDP18A"
    "jsEArsYM32wBwLG6DFuvSWfGqVaEyQTgNy18KLUv/UQAAAGlAQC0AmEgR05VIC4vLi9ATG9uZ0xpbmsgZW50cnkg"
    "aG9sZHMgdGhpcyBuYW1lCgABVBcCLJMmylGnzii1L/1kAAkVBgDiRxkZcDcOgFg6IdJQGyNVOM7kIbaUJs+8qv7j"
    "pU9cTmmVUsSRIISBObBeifp1XQv1cwL2UuKyEnvcqzOrtJQy8/+3dolZuqHWLjmaGYW1ZyjonMxnKIYlkKiLGXX3"
    "x0IjRWtXANBBJyAAYEA1oMPAHgWmGxggFOQvSIyZeAA4QNqgMjNZCSjAmg5qgIyCAZRI/EEWYAWB80JYvwEBB4T7"
    "BVNori5qIFUobAIKpOoAWAw6IBEzbagFwNIVEDjsGianBBQ/WtwotS/9RAgAA4UDAILFEhiQKQ1YdgUAs6SgBAnu"
    "7oyNO2tly3NB0sn2YlIUd5nf7GV+R+gC56yO/f/vBP+fJB6ABC6UMoxXFyz4gDhJPKwGTC+LSKmLDKyEFAwAwIEF"
    "FKjECWCDAMEBNKEBDDyLmQZAt7o2nq/pMBvVPQE7+jQcKLUv/UQAAAG1AABwYSBmaWxlIGFnYWluCgABVA4CLO8E"
    "Qxa4g1AqTRhFAgAAKLUv/WQsCL0RAHKkZSFAa9zYOF2o+SkqGpGS8pxofEYMgUV+d0V2I+f/GwYAeF0PiQGSPCBI"
    "4o6XLeiQMd1tYYIOdXX5usVWawsbvr9X9lwv5drBb5jOjElmRlmuKm+nQOiFqBlmT5nDXRAq1Ne2pVeG7Tfmb5Ny"
    "U4ziZfZppuTepz7mWbf1GmxMGw7Dl4WPEXrcQ0oxRKP8i78oEgIH0WlEp+FgiB6/gPqxLOLTWBLigmHFsndbJVvV"
    "bG21lSl9uZZitep6LS/2bsZKsxW+5nZN6lRLmivXkhAXypDzFIv4NFhqvKt5Yyr1sTrD/zQVOpdMGX+a1HZq63x9"
    "uaUvx96S51NuMbesUi5Eo7xCoNmoajIHllqUWjRTOo/3OHZ91N94aIkehT8e4AFBkoCDmMDwdb4w6T/HrzV5cbZ7"
    "j3Gu1Ss7S2bl9i0mF/ur99qqlzV1/uSvaSybESnRL5zXGNEoj48gfFSDEy0eQmB4ACgHUDte7EaC4Y+HDyEknphQ"
    "EI3yjo4KgiCJA4IkBYhGid6BHvEVJAFQiEaJjxNBr6AgiUM5AAaDBAC4DaidANpBa9l3gmBQwmCQwAMR9MoLB6JI"
    "GzQFFporgJ5wGrLQ0WUqZasMxdoGqaJ3CwOXlAkNSLxwTSYKPqIrCNdgkAwA9wG1p42Q9ogoEK/MMbMkRBYCCO4U"
    "OSPEXZYJ4I6e1SkoYTBIAMBtjLZ2RavvSQuz2qH9NmAOi6uKnbWDgQrRgxuwHk08hxoBwqiZ46g2xhGUGeMExK1Q"
    "Kk0YKAAAAGYDAAAAAAAARQIAAAAAAAAsCQAAAAAAAAEAAAAAAAAAR25VbEluVXg="
)
CTR_ZSTD_CHUNKED_ANNOTATIONS = {
    "containerd.io/snapshot/stargz/toc.digest": "sha256:0411ed994fca24e21bd554835f26b1f89f8c4019e63785583791de2d64e1fd7a",
    "io.containers.estargz.uncompressed-size": "8704",
    "io.containers.zstd-chunked.manifest-checksum": "sha256:7c3bf5665a00b4d64db3e26cf772e293354b7bdc1a6e1f6785ef3d65503767b4",
    "io.containers.zstd-chunked.manifest-position": "870:581:2348:1",
}
