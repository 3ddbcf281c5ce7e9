"""Spending categories: a merchant's 4-digit merchant category code (MCC, ISO 18245) to a group.

ISO 18245 (and the card schemes' merchant data manuals built on it) divide the codes into ranges:
0001-1499 agricultural services, 1500-2999 contracted services, 3000-3299 airlines, 3300-3499 car
rental, 3500-3999 lodging, 4000-4799 transportation, 4800-4999 utilities (and telecommunication),
5000-5599 retail outlets, 5600-5699 clothing stores, 5700-7299 miscellaneous stores (and personal
services), 7300-7999 business services (7500s automotive, 7800-7999 amusement and entertainment),
8000-8999 professional services and membership organisations (8000-8099 medical), 9000-9999
government services. ``RANGES`` maps those ranges, refined by the well-known codes inside them
(5411 grocery stores, 5812 restaurants, 5912 pharmacies, 4111 commuter transport, ...), to the
groups a wallet shows.

Invariants (unit-tested): ranges are sorted, never overlap, lie within 0000-9999, and name a group
of ``GROUPS``; a code no range covers, and anything that is not 4 digits, is ``other``.
Pure: no I/O.
"""

from __future__ import annotations

import bisect
from typing import Final

GROCERIES: Final = "groceries"
DINING: Final = "dining"
TRANSPORT: Final = "transport"
SHOPPING: Final = "shopping"
TRAVEL: Final = "travel"
ENTERTAINMENT: Final = "entertainment"
HEALTH: Final = "health"
UTILITIES: Final = "utilities"
OTHER: Final = "other"
GROUPS: Final = (GROCERIES, DINING, TRANSPORT, SHOPPING, TRAVEL, ENTERTAINMENT, HEALTH, UTILITIES, OTHER)

# (first code, last code, group), sorted; codes not covered are OTHER (agricultural and contracted
# services, wholesale, financial institutions, insurance, professional services, government, ...).
RANGES: Final[tuple[tuple[int, int, str], ...]] = (
    (742, 742, HEALTH),  # veterinary services
    (3000, 3299, TRAVEL),  # airlines (by carrier)
    (3300, 3499, TRAVEL),  # car rental (by agency)
    (3500, 3999, TRAVEL),  # lodging: hotels, motels, resorts (by chain)
    (4011, 4011, TRANSPORT),  # railroads
    (4111, 4112, TRANSPORT),  # local and suburban commuter transport, passenger railways
    (4119, 4119, HEALTH),  # ambulance services
    (4121, 4131, TRANSPORT),  # taxicabs and limousines, bus lines
    (4411, 4411, TRAVEL),  # cruise lines
    (4457, 4468, ENTERTAINMENT),  # boat rentals and leasing, marinas
    (4511, 4582, TRAVEL),  # airlines and air carriers, airports and terminals
    (4722, 4723, TRAVEL),  # travel agencies, tour operators
    (4784, 4789, TRANSPORT),  # tolls and bridge fees, transportation services
    (4812, 4812, SHOPPING),  # telecommunication equipment and telephone sales
    (4813, 4821, UTILITIES),  # telecommunication services, computer network services, telegraph
    (4899, 4900, UTILITIES),  # cable and pay television; electric, gas, water, sanitary utilities
    (5200, 5399, SHOPPING),  # home supply, hardware, garden; department, discount and variety stores
    (5411, 5411, GROCERIES),  # grocery stores, supermarkets
    (5422, 5422, GROCERIES),  # freezer and locker meat provisioners
    (5441, 5451, GROCERIES),  # candy, nut and confectionery stores; dairy products stores
    (5462, 5462, GROCERIES),  # bakeries
    (5499, 5499, GROCERIES),  # miscellaneous food stores, convenience stores
    (5511, 5532, SHOPPING),  # car and truck dealers, auto and home supply, automotive tire stores
    (5533, 5533, TRANSPORT),  # automotive parts and accessories stores
    (5541, 5542, TRANSPORT),  # service stations, automated fuel dispensers
    (5551, 5599, SHOPPING),  # boat, motorcycle, RV and other vehicle dealers
    (5600, 5699, SHOPPING),  # clothing and accessories, shoe stores, tailors
    (5712, 5799, SHOPPING),  # furniture, home furnishings, electronics, music, computer software
    (5811, 5814, DINING),  # caterers, restaurants, drinking places, fast food
    (5815, 5818, ENTERTAINMENT),  # digital goods: books, movies, music, games, applications
    (5912, 5912, HEALTH),  # drug stores and pharmacies
    (5921, 5921, GROCERIES),  # package stores: beer, wine and liquor
    (5931, 5950, SHOPPING),  # used goods, antiques, sporting goods, books, stationery, jewellery, toys, gifts
    (5960, 5974, SHOPPING),  # direct marketing, artist supplies, art dealers, stamps and coins
    (5975, 5976, HEALTH),  # hearing aids, orthopedic goods and prosthetic devices
    (5977, 5978, SHOPPING),  # cosmetic stores, typewriter stores
    (5983, 5983, UTILITIES),  # fuel dealers: fuel oil, wood, coal, liquefied petroleum
    (5992, 5999, SHOPPING),  # florists, tobacco, news dealers, pet shops, miscellaneous specialty retail
    (7011, 7012, TRAVEL),  # hotels, motels, resorts; timeshares
    (7032, 7032, ENTERTAINMENT),  # sporting and recreational camps
    (7033, 7033, TRAVEL),  # trailer parks, campgrounds
    (7512, 7512, TRAVEL),  # car rental agencies
    (7513, 7513, TRANSPORT),  # truck and utility trailer rentals
    (7519, 7519, TRAVEL),  # motor home and recreational vehicle rentals
    (7523, 7523, TRANSPORT),  # parking lots, parking meters, garages
    (7531, 7549, TRANSPORT),  # automotive body repair, tyres, service shops, car washes, towing
    (7800, 7999, ENTERTAINMENT),  # amusement and entertainment: cinemas, theatre tickets, sports, parks
    (8011, 8099, HEALTH),  # doctors, dentists, opticians, nursing care, hospitals, medical services
)
_FIRSTS: Final = tuple(first for first, _, _ in RANGES)


def group(mcc: str) -> str:
    """The spending group of an MCC (``"5812"`` -> ``dining``); ``other`` for anything unmapped or malformed."""
    if len(mcc) != 4 or not mcc.isascii() or not mcc.isdigit():
        return OTHER
    code = int(mcc)
    index = bisect.bisect_right(_FIRSTS, code) - 1
    if index >= 0 and code <= RANGES[index][1]:
        return RANGES[index][2]
    return OTHER


def sql_ranges() -> tuple[list[int], list[int], list[str]]:
    """The ranges as three parallel arrays, so that a query groups by category in the database with
    this very table (``unnest($1::int[], $2::int[], $3::text[])``), never a copy of it."""
    return [r[0] for r in RANGES], [r[1] for r in RANGES], [r[2] for r in RANGES]
