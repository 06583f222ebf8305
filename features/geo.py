"""Geography of the site's visitors: where the cities are, relative to Moscow."""

import math

MOSCOW = "Moscow"
SAINT_PETERSBURG = "Saint Petersburg"
RUSSIA = "Russia"

# Approximate coordinates (latitude, longitude) of the cities that bring most traffic.
CITY_COORDS: dict[str, tuple[float, float]] = {
    "Moscow": (55.756, 37.617),
    "Saint Petersburg": (59.939, 30.316),
    "Yekaterinburg": (56.838, 60.597),
    "Krasnodar": (45.035, 38.975),
    "Kazan": (55.796, 49.106),
    "Samara": (53.195, 50.101),
    "Nizhny Novgorod": (56.327, 44.006),
    "Novosibirsk": (55.008, 82.935),
    "Ufa": (54.735, 55.959),
    "Chelyabinsk": (55.160, 61.403),
    "Rostov-on-Don": (47.222, 39.720),
    "Voronezh": (51.672, 39.184),
    "Perm": (58.010, 56.229),
    "Krasnoyarsk": (56.010, 92.852),
    "Omsk": (54.989, 73.368),
    "Volgograd": (48.708, 44.513),
    "Tula": (54.193, 37.617),
    "Tyumen": (57.153, 65.534),
    "Saratov": (51.533, 46.034),
    "Irkutsk": (52.287, 104.305),
    "Yaroslavl": (57.626, 39.894),
    "Sochi": (43.585, 39.720),
    "Kaliningrad": (54.710, 20.510),
    "Tver": (56.859, 35.912),
    "Ryazan": (54.630, 39.742),
    "Kaluga": (54.514, 36.262),
    "Vladimir": (56.129, 40.407),
    "Tolyatti": (53.508, 49.419),
    "Izhevsk": (56.853, 53.212),
    "Barnaul": (53.348, 83.780),
    "Khabarovsk": (48.480, 135.072),
    "Vladivostok": (43.116, 131.886),
    "Makhachkala": (42.983, 47.504),
    "Stavropol": (45.044, 41.969),
    "Penza": (53.195, 45.018),
    "Lipetsk": (52.610, 39.594),
    "Kirov": (58.603, 49.668),
    "Cheboksary": (56.146, 47.251),
    "Orenburg": (51.768, 55.097),
    "Tomsk": (56.484, 84.948),
    "Kemerovo": (55.355, 86.087),
    "Belgorod": (50.595, 36.587),
    "Kursk": (51.730, 36.193),
    "Bryansk": (53.243, 34.364),
    "Smolensk": (54.782, 32.045),
    "Ivanovo": (57.000, 40.974),
    "Arkhangelsk": (64.539, 40.516),
    "Murmansk": (68.970, 33.075),
    "Surgut": (61.254, 73.396),
    "Astrakhan": (46.348, 48.033),
    "Ulyanovsk": (54.317, 48.403),
    "Naberezhnye Chelny": (55.743, 52.396),
    "Balashikha": (55.796, 37.938),
    "Podolsk": (55.431, 37.545),
    "Khimki": (55.889, 37.445),
    "Mytishchi": (55.911, 37.730),
    "Korolyov": (55.922, 37.854),
    "Lyubertsy": (55.676, 37.898),
    "Krasnogorsk": (55.832, 37.330),
    "Odintsovo": (55.678, 37.263),
    "Elektrostal": (55.789, 38.446),
    "Kolomna": (55.079, 38.778),
    "Domodedovo": (55.437, 37.766),
    "Serpukhov": (54.913, 37.411),
    "Shchyolkovo": (55.921, 37.991),
    "Pushkino": (56.011, 37.847),
    "Reutov": (55.758, 37.861),
    "Dolgoprudny": (55.933, 37.514),
    "Zelenograd": (55.983, 37.194),
    "Sergiyev Posad": (56.300, 38.133),
    "Noginsk": (55.855, 38.441),
    "Zhukovsky": (55.597, 38.120),
    "Vidnoye": (55.551, 37.709),
    "Lobnya": (56.012, 37.480),
    "Dmitrov": (56.344, 37.520),
    "Ramenskoye": (55.567, 38.230),
    "Fryazino": (55.960, 38.045),
    "Ivanteyevka": (55.971, 37.921),
    "Dzerzhinsky": (55.630, 37.850),
    "Kotelniki": (55.660, 37.863),
    "Lytkarino": (55.583, 37.900),
    "Naro-Fominsk": (55.386, 36.734),
    "Chekhov": (55.142, 37.455),
    "Klin": (56.331, 36.728),
    "Istra": (55.916, 36.860),
}

# Towns of the Moscow region (oblast) that appear in the data; Moscow itself is separate.
MOSCOW_REGION: frozenset[str] = frozenset(
    {
        "Balashikha",
        "Podolsk",
        "Khimki",
        "Mytishchi",
        "Korolyov",
        "Lyubertsy",
        "Krasnogorsk",
        "Odintsovo",
        "Elektrostal",
        "Kolomna",
        "Domodedovo",
        "Serpukhov",
        "Shchyolkovo",
        "Pushkino",
        "Reutov",
        "Dolgoprudny",
        "Zelenograd",
        "Sergiyev Posad",
        "Noginsk",
        "Zhukovsky",
        "Vidnoye",
        "Lobnya",
        "Dmitrov",
        "Ramenskoye",
        "Fryazino",
        "Ivanteyevka",
        "Dzerzhinsky",
        "Kotelniki",
        "Lytkarino",
        "Naro-Fominsk",
        "Chekhov",
        "Klin",
        "Istra",
    }
)


def _haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1 = map(math.radians, a)
    lat2, lon2 = map(math.radians, b)
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


# Distance of each known city to Moscow, computed once; unknown cities have none.
DISTANCE_TO_MOSCOW_KM: dict[str, float] = {
    city: _haversine_km(coords, CITY_COORDS[MOSCOW]) for city, coords in CITY_COORDS.items()
}
