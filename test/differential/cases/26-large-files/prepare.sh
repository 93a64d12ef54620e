# 40 MiB of incompressible but reproducible data (AES-CTR keystream)
openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 0 -nosalt -in /dev/zero 2>/dev/null | head -c 41943040 > big.bin
