#include "sa_check.h"
int main(void){return 0;}
