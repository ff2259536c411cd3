"""Expected state_dict (key, shape) lists derived from torchvision's published MobileNet tables.

Written independently of mobiletl_export.models: it walks the architecture tables of torchvision's
mobilenetv2.py / mobilenetv3.py (and efficientnet_pytorch's Lite0 block strings) and spells out the keys the
way torchvision's modules name them. Only `make_divisible`'s rule is shared knowledge.
"""


def _div8(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def _bn(prefix, c):
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def _cna(prefix, cin, cout, k, groups=1):
    """Conv2dNormActivation: `.0` conv without bias, `.1` BatchNorm."""
    return [(f"{prefix}.0.weight", (cout, cin // groups, k, k))] + _bn(f"{prefix}.1", cout)


def mobilenet_v2_keys(num_classes=1000, width=1.0):
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]
    cin = _div8(32 * width)
    keys = _cna("features.0", 3, cin, 3)
    idx = 1
    for t, c, n, _s in table:
        cout = _div8(c * width)
        for _ in range(n):
            hid = int(round(cin * t))
            p = f"features.{idx}.conv"
            if t == 1:
                keys += _cna(f"{p}.0", hid, hid, 3, hid) + [(f"{p}.1.weight", (cout, hid, 1, 1))] + _bn(f"{p}.2", cout)
            else:
                keys += (_cna(f"{p}.0", cin, hid, 1) + _cna(f"{p}.1", hid, hid, 3, hid)
                         + [(f"{p}.2.weight", (cout, hid, 1, 1))] + _bn(f"{p}.3", cout))
            cin, idx = cout, idx + 1
    last = _div8(1280 * max(1.0, width))
    keys += _cna(f"features.{idx}", cin, last, 1)
    return keys + [("classifier.1.weight", (num_classes, last)), ("classifier.1.bias", (num_classes,))]


V3_LARGE = [(16, 3, 16, 16, False), (16, 3, 64, 24, False), (24, 3, 72, 24, False), (24, 5, 72, 40, True),
            (40, 5, 120, 40, True), (40, 5, 120, 40, True), (40, 3, 240, 80, False), (80, 3, 200, 80, False),
            (80, 3, 184, 80, False), (80, 3, 184, 80, False), (80, 3, 480, 112, True), (112, 3, 672, 112, True),
            (112, 5, 672, 160, True), (160, 5, 960, 160, True), (160, 5, 960, 160, True)]
V3_SMALL = [(16, 3, 16, 16, True), (16, 3, 72, 24, False), (24, 3, 88, 24, False), (24, 5, 96, 40, True),
            (40, 5, 240, 40, True), (40, 5, 240, 40, True), (40, 5, 120, 48, True), (48, 5, 144, 48, True),
            (48, 5, 288, 96, True), (96, 5, 576, 96, True), (96, 5, 576, 96, True)]


def mobilenet_v3_keys(arch, num_classes=1000):
    table, last_channel = (V3_LARGE, 1280) if arch == "large" else (V3_SMALL, 1024)
    keys = _cna("features.0", 3, 16, 3)
    for i, (cin, k, exp, cout, se) in enumerate(table, start=1):
        p, j = f"features.{i}.block", 0
        if exp != cin:
            keys += _cna(f"{p}.0", cin, exp, 1)
            j = 1
        keys += _cna(f"{p}.{j}", exp, exp, k, exp)
        if se:
            sq = _div8(exp // 4)
            j += 1
            keys += [(f"{p}.{j}.fc1.weight", (sq, exp, 1, 1)), (f"{p}.{j}.fc1.bias", (sq,)),
                     (f"{p}.{j}.fc2.weight", (exp, sq, 1, 1)), (f"{p}.{j}.fc2.bias", (exp,))]
        keys += _cna(f"{p}.{j + 1}", exp, cout, 1)
    last_in = table[-1][3]
    keys += _cna(f"features.{len(table) + 1}", last_in, 6 * last_in, 1)
    return keys + [("classifier.0.weight", (last_channel, 6 * last_in)), ("classifier.0.bias", (last_channel,)),
                   ("classifier.3.weight", (num_classes, last_channel)), ("classifier.3.bias", (num_classes,))]


# torchvision's documented parameter counts (weights tables of mobilenet_v2 / mobilenet_v3_large / _small).
TORCHVISION_NUM_PARAMS = {"mbv2": 3_504_872, "mbv3-large": 5_483_032, "mbv3-small": 2_542_856}
