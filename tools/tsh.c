/* tools/tsh.c: the user's tool. Logging in and reaching servers come with the
 * proxy; this version knows its version and says plainly what it cannot do yet. */
#include <stdio.h>
#include <string.h>

#include "lib/version.h"

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("tsh %s\n", rp_version_self());
        return 0;
    }
    fprintf(stderr, "usage: tsh version\n"
                    "tsh: login and ssh need the proxy service, which this version does not "
                    "have yet\n");
    return 2;
}
